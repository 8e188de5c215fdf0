//! YAML text → one tree per document, each node with its line; then tree → JSON value plus
//! the [`SpanMap`] of its field paths.
//!
//! The event parser of `yaml-rust2` (maintained; `serde_yaml` is not) does the scanning.
//! Building the tree here, rather than with the library's loader, is what lets Weft bound
//! alias expansion and nesting and keep a line for every node. JSON is YAML, so `.json`
//! files go through the same path and get lines too.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::limits::Limits;
use super::span::{SpanMap, hash_path};

/// A YAML node and the line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: u32,
    pub value: NodeValue,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeValue {
    /// A scalar; `plain` when unquoted, so `10` is a number and `"10"` a string.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The value of `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, NodeValue::Scalar { text, .. } if text == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Whether this is an empty document (`---` with nothing after it, or `~`).
    pub fn is_null(&self) -> bool {
        matches!(&self.value, NodeValue::Scalar { text, plain: true } if is_null(text))
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            NodeValue::Scalar { .. } => 0,
            NodeValue::Seq(items) => items.iter().map(Node::size).sum(),
            NodeValue::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

/// Why a stream could not be read.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub line: u32,
    pub limit: bool,
    pub message: String,
}

enum Frame {
    Seq {
        line: u32,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: u32,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses `text` and calls `on_document` with each document's tree, in order. Documents
/// before an error have been delivered when the error is returned.
pub(crate) fn for_each_document(
    text: &str,
    limits: &Limits,
    mut on_document: impl FnMut(Node),
) -> Result<(), YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: line_of(e.marker()),
            limit: false,
            message: describe_scan_error(text, e.marker(), e.info()),
        })?;
        let line = line_of(&mark);
        let limit_error = |message: String| YamlError {
            line,
            limit: true,
            message,
        };
        let (node, anchor) = match event {
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart => {
                anchors.clear();
                nodes = 0;
                continue;
            }
            Event::DocumentEnd => {
                if let Some(document) = root.take() {
                    on_document(document);
                }
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(limit_error(format!(
                        "nesting deeper than {} levels; no Istio resource is this deep",
                        limits.max_depth
                    )));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq {
                        line,
                        anchor,
                        items: Vec::new(),
                    },
                    _ => Frame::Map {
                        line,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    },
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    line,
                    anchor,
                    items,
                }) => (
                    Node {
                        line,
                        value: NodeValue::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    line,
                    anchor,
                    entries,
                    ..
                }) => (
                    Node {
                        line,
                        value: NodeValue::Map(entries),
                    },
                    anchor,
                ),
                None => continue,
            },
            Event::Scalar(text, style, anchor, tag) => {
                // An explicit `!!str` tag makes a plain scalar a string, as a quote would.
                let plain = style == TScalarStyle::Plain
                    && !tag.is_some_and(|t| t.suffix == "str" || t.suffix.ends_with(":str"));
                (
                    Node {
                        line,
                        value: NodeValue::Scalar { text, plain },
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(YamlError {
                        line,
                        limit: false,
                        message: "alias to an unknown anchor".to_string(),
                    });
                };
                let size = target.size();
                if nodes + size > limits.max_document_nodes {
                    return Err(limit_error(format!(
                        "aliases expand this document past {} nodes; refusing it (an alias bomb?)",
                        limits.max_document_nodes
                    )));
                }
                nodes += size - 1;
                let mut copy = target.clone();
                copy.line = line;
                (copy, 0)
            }
            Event::StreamStart | Event::Nothing => continue,
        };
        nodes += 1;
        if nodes > limits.max_document_nodes {
            return Err(limit_error(format!(
                "the document has more than {} nodes",
                limits.max_document_nodes
            )));
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

fn line_of(mark: &Marker) -> u32 {
    u32::try_from(mark.line()).unwrap_or(u32::MAX).max(1)
}

fn describe_scan_error(text: &str, mark: &Marker, info: &str) -> String {
    let line_text = text
        .lines()
        .nth(mark.line().saturating_sub(1))
        .unwrap_or("");
    let indent: String = line_text
        .chars()
        .take_while(|c| c.is_whitespace())
        .collect();
    let mut message = format!("YAML syntax error at column {}: {info}", mark.col() + 1);
    if info.contains("flow sequence")
        || info.contains("flow mapping")
        || info.contains("placement of ':'")
    {
        message.push_str(" (is a [ or { on an earlier line left unclosed?)");
    }
    if indent.contains('\t') {
        message.push_str("; YAML does not allow tabs for indentation, use spaces");
    }
    message
}

/// Converts a resource's tree to JSON, recording the line of every field path.
pub(crate) fn to_json(node: &Node) -> Result<(Value, SpanMap), YamlError> {
    let mut spans = Vec::new();
    let mut path = String::new();
    spans.push((hash_path(""), node.line));
    let value = convert(node, &mut path, &mut spans)?;
    Ok((value, SpanMap::from_entries(spans)))
}

fn convert(
    node: &Node,
    path: &mut String,
    spans: &mut Vec<(u64, u32)>,
) -> Result<Value, YamlError> {
    Ok(match &node.value {
        NodeValue::Scalar { text, plain } => {
            if *plain {
                resolve_plain(text)
            } else {
                Value::String(text.clone())
            }
        }
        NodeValue::Seq(items) => {
            let mut values = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                spans.push((hash_path(path), item.line));
                values.push(convert(item, path, spans)?);
                path.truncate(len);
            }
            Value::Array(values)
        }
        NodeValue::Map(entries) => {
            let mut map = Map::new();
            let mut merged: Vec<&Node> = Vec::new();
            for (key, value) in entries {
                let NodeValue::Scalar {
                    text: key_text,
                    plain,
                } = &key.value
                else {
                    return Err(YamlError {
                        line: key.line,
                        limit: false,
                        message: "a mapping key must be a plain value, not a list or mapping"
                            .to_string(),
                    });
                };
                if *plain && key_text == "<<" {
                    merged.push(value);
                    continue;
                }
                if map.contains_key(key_text) {
                    return Err(YamlError {
                        line: key.line,
                        limit: false,
                        message: format!("the key {key_text:?} appears twice in one mapping"),
                    });
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key_text);
                spans.push((hash_path(path), key.line));
                let converted = convert(value, path, spans)?;
                path.truncate(len);
                map.insert(key_text.clone(), converted);
            }
            // YAML merge keys (`<<: *defaults`): fill in what the mapping does not set itself.
            for source in merged {
                let sources: Vec<&Node> = match &source.value {
                    NodeValue::Seq(items) => items.iter().collect(),
                    _ => vec![source],
                };
                for source in sources {
                    if let Value::Object(extra) = convert(source, path, spans)? {
                        for (k, v) in extra {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
            }
            Value::Object(map)
        }
    })
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// YAML 1.2 core schema resolution of an unquoted scalar.
fn resolve_plain(text: &str) -> Value {
    if is_null(text) {
        return Value::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::Number(n.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(n.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(n) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(n.into());
    }
    let looks_numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_numeric
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Writes a JSON value as a YAML document (for `-o yaml` outputs).
pub(crate) fn write_yaml(value: &Value) -> String {
    fn to_yaml(value: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match value {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
            Value::Object(map) => Yaml::Hash(
                map.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    // Writing to a String cannot fail; an error here would be a bug in the emitter.
    if emitter.dump(&to_yaml(value)).is_err() {
        return String::new();
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documents(text: &str) -> Vec<Node> {
        let mut out = Vec::new();
        for_each_document(text, &Limits::default(), |d| out.push(d)).unwrap();
        out
    }

    #[test]
    fn records_lines_of_fields() {
        let docs = documents("a: 1\nb:\n  - x: \"2\"\n    y: 2.5\n---\nc: true\n");
        assert_eq!(docs.len(), 2);
        let (value, spans) = to_json(&docs[0]).unwrap();
        assert_eq!(value["b"][0]["x"], Value::String("2".into()));
        assert_eq!(value["b"][0]["y"], serde_json::json!(2.5));
        assert_eq!(spans.line_of("a"), Some(1));
        assert_eq!(spans.line_of("b[0].y"), Some(4));
        let (value, _) = to_json(&docs[1]).unwrap();
        assert_eq!(value["c"], Value::Bool(true));
    }

    #[test]
    fn expands_aliases_and_merge_keys() {
        let docs = documents("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n");
        let (value, _) = to_json(&docs[0]).unwrap();
        assert_eq!(value["use"], serde_json::json!({"x": 1, "y": 2}));
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let err = for_each_document(&text, &Limits::default(), |_| {}).unwrap_err();
        assert!(err.limit, "{}", err.message);
    }

    #[test]
    fn refuses_deep_nesting() {
        let text = "a:\n".to_string() + &"- ".repeat(500) + "x\n";
        let err = for_each_document(&text, &Limits::default(), |_| {}).unwrap_err();
        assert!(
            err.limit && err.message.contains("nesting"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rejects_duplicate_keys() {
        let docs = documents("a: 1\na: 2\n");
        assert!(to_json(&docs[0]).unwrap_err().message.contains("twice"));
    }
}
