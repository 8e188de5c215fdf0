//! How the model shows in the config dump (`/config_dump`): the parsed values it holds as
//! what they were parsed from — regexes as their patterns, statuses as numbers, bodies,
//! header names and values as text. Used as `#[serde(with = "super::dump")]`.

use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Serializer;

/// A parsed value the config dump shows as what it was parsed from.
pub(super) trait Shown {
    /// Writes it.
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
}

impl Shown for Regex {
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Shown for StatusCode {
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl Shown for Bytes {
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(self))
    }
}

impl Shown for Vec<HeaderName> {
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(HeaderName::as_str))
    }
}

impl Shown for Vec<(HeaderName, HeaderValue)> {
    fn show<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.iter()
                .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()))),
        )
    }
}

/// What `#[serde(with)]` calls.
pub(super) fn serialize<T: Shown, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.show(serializer)
}
