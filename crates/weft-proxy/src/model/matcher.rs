//! String and header conditions, shared by the routes ([`super::route`]) and the
//! authorization policies ([`super::policy`]).

use regex::Regex;
use serde::Serialize;

/// A string condition.
#[derive(Debug, Serialize)]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Matches entirely.
    Regex(#[serde(with = "super::dump")] Regex),
    /// Present, whatever the value.
    Present,
}

impl StringMatch {
    /// Whether `value` satisfies the condition (`None`: absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Contains(s) => value.contains(s.as_str()),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }
}

/// A header condition.
#[derive(Debug, Serialize)]
pub struct HeaderMatch {
    /// Header name, lower case (`:method`, `:authority` too).
    pub name: String,
    /// The condition.
    pub condition: StringMatch,
    /// Holds when the condition does not (`withoutHeaders`).
    pub invert: bool,
    /// An absent header counts as empty.
    pub missing_is_empty: bool,
}
