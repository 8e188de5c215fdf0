//! Messages: what validation, analysis and loading say about a configuration.
//!
//! A message has a stable [`Code`](crate::codes::Code) (which fixes its level), the resource
//! it is about, where in which file, and one sentence a person can act on.

use std::fmt;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::codes::Code;

/// How bad a message is. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Worth knowing; nothing is wrong.
    Info,
    /// Probably not what was meant; the configuration still applies.
    Warning,
    /// The configuration is wrong and is not applied as written.
    Error,
}

impl Level {
    /// The name Istio prints (`Error`, `Warning`, `Info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }

    /// Parses a level name, case-insensitively.
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "info" => Some(Level::Info),
            "warning" | "warn" => Some(Level::Warning),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place in a file: the file's name as the user gave it, and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The file's path, or `-` for standard input.
    pub file: Arc<str>,
    /// The line, from 1.
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The resource a message is about: `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    /// The kind, as written in YAML (`VirtualService`).
    pub kind: String,
    /// The namespace, defaulted.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What kind of finding this is; fixes the level.
    pub code: &'static Code,
    /// The resource it is about, when there is one.
    pub resource: Option<ResourceRef>,
    /// Where it is, when known.
    pub origin: Option<Origin>,
    /// One sentence a person can act on.
    pub text: String,
}

impl Message {
    /// A message about a resource at a place.
    pub fn new(
        code: &'static Code,
        resource: Option<ResourceRef>,
        origin: Option<Origin>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            code,
            resource,
            origin,
            text: text.into(),
        }
    }

    /// The message's level, from its code.
    pub fn level(&self) -> Level {
        self.code.level
    }

    /// The message as JSON, the shape `weft analyze -o json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code.id,
            "istioCode": self.code.istio,
            "level": self.level().as_str(),
            "resource": self.resource.as_ref().map(|r| json!({
                "kind": r.kind, "namespace": r.namespace, "name": r.name,
            })),
            "file": self.origin.as_ref().map(|o| o.file.to_string()),
            "line": self.origin.as_ref().map(|o| o.line),
            "message": self.text,
        })
    }
}

impl fmt::Display for Message {
    /// `file:line: Level [CODE] (Kind ns/name) text [IST code]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{} [{}]", self.level(), self.code.id)?;
        if let Some(resource) = &self.resource {
            write!(f, " ({resource})")?;
        }
        write!(f, " {}", self.text)?;
        if let Some(istio) = self.code.istio {
            write!(f, " [{istio}]")?;
        }
        Ok(())
    }
}

/// Sorts messages by file and line, then level (worst first), code and text, so output is
/// stable from run to run.
pub fn sort(messages: &mut [Message]) {
    messages.sort_by(|a, b| {
        a.origin
            .as_ref()
            .cmp(&b.origin.as_ref())
            .then_with(|| b.level().cmp(&a.level()))
            .then_with(|| a.code.id.cmp(b.code.id))
            .then_with(|| a.text.cmp(&b.text))
    });
}
