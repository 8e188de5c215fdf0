//! Loading Istio resources from files, directories and streams.
//!
//! Accepts multi-document YAML, JSON, and `kind: List` (or `XxxList`) wrappers. Every resource
//! remembers the file and line where it and each of its fields start. What cannot be loaded
//! becomes a [`Message`] and the rest still loads: a syntax error in one document keeps the
//! documents before it, a type error in one resource loses only that resource, an unknown
//! field is a warning and the resource loads without it.
//!
//! Kubernetes workloads found along the way (Pods, Deployments, …) are not Istio resources,
//! but their labels are kept as [`Workload`]s so analysis can tell whether a selector matches
//! anything.

pub mod limits;
pub mod span;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use limits::Limits;
use span::SpanMap;
use yaml::Node;

use crate::codes::{self, Code};
use crate::message::{Message, Origin, ResourceRef};
use crate::meta::ObjectMeta;
use crate::resource::{Kind, Resource, Spec, VERSIONS};

/// Writes a JSON value as YAML, the way `-o yaml` outputs print.
pub fn to_yaml(value: &Value) -> String {
    yaml::write_yaml(value)
}

/// Reads every YAML (or JSON) document of `text` as a JSON value, for tools that rewrite
/// Kubernetes objects (`weft inject`); empty documents are skipped. The error names the
/// line.
pub fn documents(text: &str, limits: &Limits) -> Result<Vec<Value>, String> {
    let mut nodes = Vec::new();
    yaml::for_each_document(text, limits, |node| nodes.push(node))
        .map_err(|error| format!("line {}: {}", error.line, error.message))?;
    let mut values = Vec::new();
    for node in &nodes {
        let (value, _) = yaml::to_json(node)
            .map_err(|error| format!("line {}: {}", error.line, error.message))?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// A workload known from the loaded files, for selector checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Kind namespace/name` of the object that defines it.
    pub source: ResourceRef,
    /// The labels its pods (or entry) carry.
    pub labels: BTreeMap<String, String>,
}

/// Everything loaded so far.
#[derive(Debug, Default)]
pub struct LoadOutput {
    /// Istio resources, in the order first seen; a later duplicate replaces an earlier one.
    /// A resource with wrongly typed fields is here without them, and `messages` holds an
    /// Error for each: whoever applies configuration must skip resources with Errors.
    pub resources: Vec<Resource>,
    /// Kubernetes workloads seen.
    pub workloads: Vec<Workload>,
    /// Problems met while loading.
    pub messages: Vec<Message>,
    /// How many files (or streams) were read.
    pub files: usize,
}

/// Reads inputs into a [`LoadOutput`].
#[derive(Debug, Default)]
pub struct Loader {
    limits: Limits,
    out: LoadOutput,
    index: HashMap<(Kind, String, String), usize>,
}

/// `apiVersion`, `kind`, `metadata`, `spec` of one resource, for typed decoding.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(
        dead_code,
        reason = "checked before decoding; present so it is not an unknown field"
    )]
    api_version: Value,
    #[allow(
        dead_code,
        reason = "checked before decoding; present so it is not an unknown field"
    )]
    kind: Value,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
    #[allow(
        dead_code,
        reason = "status is written by controllers; accepted and not read"
    )]
    #[serde(default)]
    status: Value,
}

/// Kubernetes kinds whose pod template labels make a workload.
const WORKLOAD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
];

impl Loader {
    /// A loader with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Loads a file, or every `*.yaml`, `*.yml` and `*.json` file under a directory
    /// (recursively, in name order, skipping hidden entries).
    pub fn load_path(&mut self, path: &Path) {
        let name: Arc<str> = path.display().to_string().into();
        if path.is_dir() {
            match collect_config_files(path) {
                Ok(files) => {
                    for file in files {
                        self.load_file(&file);
                    }
                }
                Err(err) => self.unreadable(&name, &format!("cannot read directory: {err}")),
            }
        } else {
            self.load_file(path);
        }
    }

    fn load_file(&mut self, path: &Path) {
        let name: Arc<str> = path.display().to_string().into();
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > self.limits.max_input_bytes => {
                self.out.files += 1;
                self.too_large(&name, meta.len());
            }
            Ok(_) => match std::fs::File::open(path) {
                Ok(file) => self.load_reader(name, file),
                Err(err) => self.unreadable(&name, &format!("cannot open: {err}")),
            },
            Err(err) => self.unreadable(&name, &format!("cannot read: {err}")),
        }
    }

    /// Loads a stream (standard input, say) under the name `name`.
    pub fn load_reader(&mut self, name: impl Into<Arc<str>>, reader: impl Read) {
        let name = name.into();
        self.out.files += 1;
        let mut bytes = Vec::new();
        let limit = self.limits.max_input_bytes;
        if let Err(err) = reader.take(limit + 1).read_to_end(&mut bytes) {
            self.unreadable(&name, &format!("cannot read: {err}"));
            return;
        }
        if bytes.len() as u64 > limit {
            self.too_large(&name, bytes.len() as u64);
            return;
        }
        match String::from_utf8(bytes) {
            Ok(text) => self.parse_text(&name, &text),
            Err(err) => {
                let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count() as u32;
                self.file_message(
                    &codes::YAML_SYNTAX,
                    &name,
                    line,
                    "not UTF-8 text (is this a binary file?); Istio YAML must be UTF-8".to_string(),
                );
            }
        }
    }

    /// Loads YAML or JSON text under the name `name`.
    pub fn load_str(&mut self, name: impl Into<Arc<str>>, text: &str) {
        let name = name.into();
        self.out.files += 1;
        if text.len() as u64 > self.limits.max_input_bytes {
            self.too_large(&name, text.len() as u64);
            return;
        }
        self.parse_text(&name, text);
    }

    /// Everything loaded.
    pub fn finish(self) -> LoadOutput {
        self.out
    }

    fn parse_text(&mut self, file: &Arc<str>, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut documents = 0usize;
        let limits = self.limits;
        let result = yaml::for_each_document(text, &limits, |node| {
            if !node.is_null() {
                documents += 1;
                self.load_document(file, &node);
            }
        });
        match result {
            Ok(()) if documents == 0 => self.file_message(
                &codes::EMPTY_INPUT,
                file,
                1,
                "the file holds no resources".to_string(),
            ),
            Ok(()) => {}
            Err(err) => {
                let code = if err.limit {
                    &codes::INPUT_LIMIT
                } else {
                    &codes::YAML_SYNTAX
                };
                let text = if err.limit || err.message.starts_with("YAML") {
                    err.message
                } else {
                    format!("YAML error: {}", err.message)
                };
                self.file_message(code, file, err.line, text);
            }
        }
    }

    fn load_document(&mut self, file: &Arc<str>, node: &Node) {
        let kind = node.get("kind").and_then(Node::as_str).unwrap_or("");
        match node.get("items") {
            Some(items) if kind.ends_with("List") => {
                if let yaml::NodeValue::Seq(items) = &items.value {
                    for item in items {
                        self.load_object(file, item);
                    }
                }
            }
            _ => self.load_object(file, node),
        }
    }

    fn load_object(&mut self, file: &Arc<str>, node: &Node) {
        let at = |line| Origin {
            file: file.clone(),
            line,
        };
        if !matches!(node.value, yaml::NodeValue::Map(_)) {
            self.out.messages.push(Message::new(
                &codes::MISSING_TYPE,
                None,
                Some(at(node.line)),
                "a document must be a mapping with apiVersion, kind and metadata",
            ));
            return;
        }
        let (value, spans) = match yaml::to_json(node) {
            Ok(converted) => converted,
            Err(err) => {
                self.file_message(
                    &codes::YAML_SYNTAX,
                    file,
                    err.line,
                    format!("YAML error: {}", err.message),
                );
                return;
            }
        };
        let text_at = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let api_version = text_at("/apiVersion");
        let kind_name = text_at("/kind");
        let namespace = text_at("/metadata/namespace");
        let reference = ResourceRef {
            kind: kind_name.clone(),
            namespace: if namespace.is_empty() {
                crate::meta::DEFAULT_NAMESPACE.to_string()
            } else {
                namespace
            },
            name: text_at("/metadata/name"),
        };
        let origin = at(node.line);
        let field_origin = |path: &str| at(spans.line_of(path).unwrap_or(node.line));
        if api_version.is_empty() || kind_name.is_empty() {
            let missing = if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            };
            self.out.messages.push(Message::new(
                &codes::MISSING_TYPE,
                None,
                Some(origin),
                format!("the resource has no {missing}; every resource needs apiVersion and kind"),
            ));
            return;
        }
        let (group, version) = api_version
            .rsplit_once('/')
            .unwrap_or(("", api_version.as_str()));
        let Some(kind) = Kind::from_name(&kind_name) else {
            self.skip_other_kind(reference, origin, &value, group, version);
            return;
        };
        if kind.group() != group {
            self.out.messages.push(Message::new(
                &codes::UNKNOWN_VERSION,
                Some(reference),
                Some(field_origin("apiVersion")),
                format!(
                    "{kind_name} belongs to the API group {}; write apiVersion: {}/v1",
                    kind.group(),
                    kind.group()
                ),
            ));
            return;
        }
        if !VERSIONS.contains(&version) {
            self.out.messages.push(Message::new(
                &codes::UNKNOWN_VERSION,
                Some(reference),
                Some(field_origin("apiVersion")),
                format!(
                    "{kind_name} has no version {version:?}; use {group}/v1 (or v1beta1, v1alpha3)"
                ),
            ));
            return;
        }
        if reference.name.is_empty() {
            self.out.messages.push(Message::new(
                &codes::MISSING_TYPE,
                Some(reference),
                Some(field_origin("metadata")),
                "metadata.name is missing; every resource needs a name",
            ));
            return;
        }
        let decoded = match kind {
            Kind::VirtualService => {
                self.decode(value, &spans, &reference, file, Spec::VirtualService)
            }
            Kind::DestinationRule => self.decode(value, &spans, &reference, file, |s| {
                Spec::DestinationRule(Box::new(s))
            }),
            Kind::ServiceEntry => self.decode(value, &spans, &reference, file, Spec::ServiceEntry),
            Kind::WorkloadEntry => {
                self.decode(value, &spans, &reference, file, Spec::WorkloadEntry)
            }
            Kind::Gateway => self.decode(value, &spans, &reference, file, Spec::Gateway),
            Kind::Sidecar => self.decode(value, &spans, &reference, file, |s| {
                Spec::Sidecar(Box::new(s))
            }),
            Kind::PeerAuthentication => {
                self.decode(value, &spans, &reference, file, Spec::PeerAuthentication)
            }
            Kind::AuthorizationPolicy => {
                self.decode(value, &spans, &reference, file, Spec::AuthorizationPolicy)
            }
            Kind::RequestAuthentication => {
                self.decode(value, &spans, &reference, file, Spec::RequestAuthentication)
            }
        };
        if let Some((metadata, spec)) = decoded {
            self.add(Resource {
                api_version,
                metadata,
                spec,
                origin,
                spans,
            });
        }
    }

    /// Decodes a resource, reporting unknown fields and type errors at their lines.
    ///
    /// A field of the wrong type is reported, then dropped, and decoding tried again, so the
    /// rest of the resource is still validated and analysed (every field is optional, as in
    /// Istio's protos). The resource still carries an Error, so nothing applies it as is.
    fn decode<S: DeserializeOwned + Default>(
        &mut self,
        mut value: Value,
        spans: &SpanMap,
        reference: &ResourceRef,
        file: &Arc<str>,
        wrap: impl FnOnce(S) -> Spec,
    ) -> Option<(ObjectMeta, Spec)> {
        /// Enough for any real resource; a bound so hostile input cannot loop for long.
        const MAX_DROPPED_FIELDS: usize = 32;
        let at = |path: &str| Origin {
            file: file.clone(),
            line: spans.line_of(path).unwrap_or(1),
        };
        let mut unknown = Vec::new();
        for attempt in 0..MAX_DROPPED_FIELDS {
            let result: Result<Envelope<S>, _> = serde_path_to_error::deserialize(
                serde_ignored::Deserializer::new(&value, &mut |path: serde_ignored::Path| {
                    if attempt == 0 {
                        unknown.push(ignored_path(&path));
                    }
                }),
            );
            let err = match result {
                Ok(envelope) => {
                    self.report_unknown_fields(&unknown, reference, &at);
                    return Some((envelope.metadata, wrap(envelope.spec)));
                }
                Err(err) => err,
            };
            let path = err.path().to_string();
            let (code, text) = describe_decode_error(&path, &err.inner().to_string());
            self.out.messages.push(Message::new(
                code,
                Some(reference.clone()),
                Some(at(&path)),
                text,
            ));
            if !remove_at(&mut value, err.path()) {
                break;
            }
        }
        self.report_unknown_fields(&unknown, reference, &at);
        None
    }

    fn report_unknown_fields(
        &mut self,
        paths: &[String],
        reference: &ResourceRef,
        at: &impl Fn(&str) -> Origin,
    ) {
        for path in paths {
            let field = path.rsplit(['.', '[']).next().unwrap_or(path);
            self.out.messages.push(Message::new(
                &codes::UNKNOWN_FIELD,
                Some(reference.clone()),
                Some(at(path)),
                format!("unknown field `{field}` at {path}; Weft ignores it (a typo, or a field of another Istio version?)"),
            ));
        }
    }

    fn add(&mut self, resource: Resource) {
        let key = (
            resource.kind(),
            resource.namespace().to_string(),
            resource.metadata.name.clone(),
        );
        if let Some(&index) = self.index.get(&key) {
            let earlier = &self.out.resources[index].origin;
            self.out.messages.push(Message::new(
                &codes::DUPLICATE_RESOURCE,
                Some(resource.reference()),
                Some(resource.origin.clone()),
                format!("defined again; this definition replaces the one at {earlier}, as kubectl apply would"),
            ));
            self.out.resources[index] = resource;
        } else {
            self.index.insert(key, self.out.resources.len());
            self.out.resources.push(resource);
        }
    }

    fn skip_other_kind(
        &mut self,
        reference: ResourceRef,
        origin: Origin,
        value: &Value,
        group: &str,
        version: &str,
    ) {
        if WORKLOAD_KINDS.contains(&reference.kind.as_str()) {
            let labels_at = match reference.kind.as_str() {
                "Pod" => "/metadata/labels",
                "CronJob" => "/spec/jobTemplate/spec/template/metadata/labels",
                _ => "/spec/template/metadata/labels",
            };
            let labels = value
                .pointer(labels_at)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            self.out.workloads.push(Workload {
                source: reference,
                labels,
            });
            return;
        }
        let (code, text) = if group.ends_with("istio.io") {
            (
                &codes::UNSUPPORTED_KIND,
                format!(
                    "Weft does not read {} ({group}/{version}) yet; the resource is skipped",
                    reference.kind
                ),
            )
        } else {
            (
                &codes::UNKNOWN_KIND,
                "not an Istio resource Weft reads; skipped".to_string(),
            )
        };
        self.out
            .messages
            .push(Message::new(code, Some(reference), Some(origin), text));
    }

    fn file_message(&mut self, code: &'static Code, file: &Arc<str>, line: u32, text: String) {
        self.out.messages.push(Message::new(
            code,
            None,
            Some(Origin {
                file: file.clone(),
                line,
            }),
            text,
        ));
    }

    fn unreadable(&mut self, file: &Arc<str>, why: &str) {
        self.out.messages.push(Message::new(
            &codes::UNREADABLE,
            None,
            Some(Origin {
                file: file.clone(),
                line: 1,
            }),
            why.to_string(),
        ));
    }

    fn too_large(&mut self, file: &Arc<str>, size: u64) {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        self.file_message(
            &codes::INPUT_LIMIT,
            file,
            1,
            format!(
                "the input is {:.1} MiB, more than the {:.0} MiB limit; split it into several files",
                mib(size),
                mib(self.limits.max_input_bytes)
            ),
        );
    }
}

/// Removes the field at `path` from `value`; false when there is nothing left to remove.
fn remove_at(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        current = match (segment, current) {
            (Segment::Map { key }, Value::Object(map)) => match map.get_mut(key) {
                Some(next) => next,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(items)) => match items.get_mut(*index) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items[*index] = Value::Null;
            true
        }
        _ => false,
    }
}

/// Turns serde's error into a code and a sentence naming the field.
fn describe_decode_error(path: &str, error: &str) -> (&'static Code, String) {
    let field = if path == "." {
        "the resource".to_string()
    } else {
        format!("`{path}`")
    };
    if let Some(rest) = error.strip_prefix("unknown variant `") {
        let (given, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let choices: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let mut text = format!("{field}: {given:?} is not one of {}", choices.join(", "));
        if let Some(best) = closest(given, &choices) {
            text.push_str(&format!("; did you mean {best}?"));
        }
        return (&codes::INVALID_ENUM, text);
    }
    let error = error
        .replace("i64", "an integer")
        .replace("u32", "a non-negative integer")
        .replace("u64", "a non-negative integer")
        .replace("f64", "a number");
    (&codes::SCHEMA, format!("{field}: {error}"))
}

/// The choice nearest to `given` by edit distance, if it is near at all.
fn closest<'a>(given: &str, choices: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_uppercase();
    choices
        .iter()
        .map(|c| (edit_distance(&given, c), *c))
        .filter(|&(d, c)| d <= c.len() / 3 + 1)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The path serde_ignored reports, in the `spec.http[0].name` form of [`SpanMap`].
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn collect_config_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_enum_value() {
        let choices = ["UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST"];
        assert_eq!(closest("ROUND_ROBN", &choices), Some("ROUND_ROBIN"));
        assert_eq!(closest("round_robin", &choices), Some("ROUND_ROBIN"));
        assert_eq!(closest("XYZ", &choices), None);
    }
}
