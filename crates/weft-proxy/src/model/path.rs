//! Request path normalization, before anything reads the path: routing, authorization, and
//! the request forwarded (Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`, which Istio's MeshConfig `pathNormalization` sets).
//! Without it a policy denying `/admin` is passed by `/x/../admin` or `/%61dmin`, which the
//! application resolves to `/admin`.
//!
//! In Envoy's order: escaped slashes first (`%2F`, `%5C`: kept, refused, or decoded), then
//! RFC 3986 normalization (the escapes of unreserved characters decoded, `%00` refused,
//! backslashes made slashes, `.` and `..` segments resolved), then runs of slashes merged.
//! The query is never changed.

use std::borrow::Cow;

use hyper::http::Uri;
use hyper::http::uri::PathAndQuery;
use serde::Serialize;

/// How a listener normalizes request paths; the default changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathNormalization {
    /// What to do with `%2F` and `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// RFC 3986 normalization.
    pub normalize: bool,
    /// `//` becomes `/`.
    pub merge_slashes: bool,
}

/// What a path's escaped slashes (`%2F`, `%5C`) become.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum EscapedSlashes {
    /// Left as they are: the application sees them escaped, policies do not see a slash.
    #[default]
    Keep,
    /// The request is refused.
    Reject,
    /// Decoded to `/` and `\` (which normalization then makes `/`).
    Unescape,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejected {
    /// An escaped slash, where the listener refuses them.
    #[error("the path has an escaped slash")]
    EscapedSlash,
    /// `%00`.
    #[error("the path has an escaped NUL")]
    Nul,
}

impl PathRejected {
    /// The reason, for the 400's body.
    pub fn reason(self) -> &'static str {
        match self {
            Self::EscapedSlash => "the path has an escaped slash",
            Self::Nul => "the path has an escaped NUL",
        }
    }
}

impl PathNormalization {
    /// Normalizes `uri`'s path in place; the scheme, authority and query stay.
    pub fn normalize_uri(&self, uri: &mut Uri) -> Result<(), PathRejected> {
        let Some(path_and_query) = uri.path_and_query() else {
            return Ok(());
        };
        let Some(normal) = self.apply(path_and_query.as_str())? else {
            return Ok(());
        };
        // The normal form only drops or decodes characters a URI allows, so it parses.
        let Ok(normal) = PathAndQuery::try_from(normal) else {
            return Ok(());
        };
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(normal);
        if let Ok(rebuilt) = Uri::from_parts(parts) {
            *uri = rebuilt;
        }
        Ok(())
    }

    /// The normal form of `path_and_query`; `None` when it is normal already.
    pub fn apply(&self, path_and_query: &str) -> Result<Option<String>, PathRejected> {
        let (path, query) = match path_and_query.find('?') {
            Some(at) => path_and_query.split_at(at),
            None => (path_and_query, ""),
        };
        if !path.starts_with('/') || !self.may_change(path) {
            return Ok(None);
        }
        let mut normal = Cow::Borrowed(path);
        match self.escaped_slashes {
            EscapedSlashes::Keep => {}
            EscapedSlashes::Reject if has_escaped_slash(path) => {
                return Err(PathRejected::EscapedSlash);
            }
            EscapedSlashes::Reject => {}
            EscapedSlashes::Unescape => normal = Cow::Owned(unescape_slashes(path)),
        }
        if self.normalize {
            normal = Cow::Owned(remove_dot_segments(&decode_unreserved(&normal)?));
        }
        if self.merge_slashes && normal.contains("//") {
            normal = Cow::Owned(merge_slashes(&normal));
        }
        if normal == path {
            return Ok(None);
        }
        Ok(Some(format!("{normal}{query}")))
    }

    /// Whether `path` has anything this normalization could change: the common path of
    /// every request, so one pass over the bytes and no allocation.
    fn may_change(&self, path: &str) -> bool {
        let bytes = path.as_bytes();
        let escapes = self.escaped_slashes != EscapedSlashes::Keep || self.normalize;
        bytes.iter().enumerate().any(|(at, &byte)| match byte {
            b'%' => escapes,
            b'\\' => self.normalize,
            b'.' => self.normalize && at > 0 && bytes[at - 1] == b'/',
            b'/' => self.merge_slashes && bytes.get(at + 1) == Some(&b'/'),
            _ => false,
        })
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` at `at` escapes.
fn escaped(bytes: &[u8], at: usize) -> Option<u8> {
    match (bytes.get(at + 1), bytes.get(at + 2)) {
        (Some(&high), Some(&low)) => Some(hex(high)? << 4 | hex(low)?),
        _ => None,
    }
}

fn has_escaped_slash(path: &str) -> bool {
    let bytes = path.as_bytes();
    (0..bytes.len()).any(|at| bytes[at] == b'%' && matches!(escaped(bytes, at), Some(b'/' | b'\\')))
}

fn unescape_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match (bytes[at], escaped(bytes, at)) {
            (b'%', Some(slash @ (b'/' | b'\\'))) => {
                out.push(slash);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

/// RFC 3986's unreserved characters: the escapes of these mean the characters themselves.
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes the escapes of unreserved characters, refuses `%00`, and makes backslashes
/// slashes; other escapes stay as they are.
fn decode_unreserved(path: &str) -> Result<String, PathRejected> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match (bytes[at], escaped(bytes, at)) {
            (b'%', Some(0)) => return Err(PathRejected::Nul),
            (b'%', Some(byte)) if unreserved(byte) => {
                out.push(byte);
                at += 3;
            }
            (b'\\', _) => {
                out.push(b'/');
                at += 1;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    // Only ASCII was decoded, so what was UTF-8 stays UTF-8.
    Ok(String::from_utf8(out).unwrap_or_else(|_| path.to_string()))
}

/// Resolves `.` and `..` segments (RFC 3986 section 5.2.4); `..` never climbs above `/`.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.get(1..).unwrap_or_default().split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.into_iter().enumerate() {
        match segment {
            "." | ".." => {
                if segment == ".." {
                    out.pop();
                }
                // `/a/..` is the folder `/`, so it keeps its trailing slash.
                if index == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: PathNormalization = PathNormalization {
        escaped_slashes: EscapedSlashes::Keep,
        normalize: true,
        merge_slashes: false,
    };
    const MERGE: PathNormalization = PathNormalization {
        merge_slashes: true,
        ..BASE
    };
    const DECODE_AND_MERGE: PathNormalization = PathNormalization {
        escaped_slashes: EscapedSlashes::Unescape,
        ..MERGE
    };

    fn normal(how: PathNormalization, path: &str) -> String {
        match how.apply(path) {
            Ok(Some(normal)) => normal,
            Ok(None) => path.to_string(),
            Err(rejected) => format!("refused: {rejected}"),
        }
    }

    #[test]
    fn base_resolves_dots_decodes_unreserved_and_turns_backslashes() {
        for (path, expected) in [
            ("/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E./admin", "/admin"),
            ("\\admin", "\\admin"),
            ("/x\\..\\admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/a/.hidden/b", "/a/.hidden/b"),
            ("/a/..b", "/a/..b"),
            ("/a%20b/%7euser", "/a%20b/~user"),
            ("/admin/../x?next=/../admin", "/x?next=/../admin"),
            ("//admin", "//admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%00b", "refused: the path has an escaped NUL"),
            ("/100%", "/100%"),
            ("*", "*"),
        ] {
            assert_eq!(normal(BASE, path), expected, "{path}");
        }
    }

    #[test]
    fn merging_and_decoding_slashes_are_choices() {
        assert_eq!(normal(MERGE, "//admin///x"), "/admin/x");
        assert_eq!(normal(MERGE, "/a%2Fb"), "/a%2Fb");
        assert_eq!(normal(DECODE_AND_MERGE, "/admin%2Fsecret"), "/admin/secret");
        assert_eq!(normal(DECODE_AND_MERGE, "/x/..%2fadmin"), "/admin");
        assert_eq!(normal(DECODE_AND_MERGE, "/x%5C..%5Cadmin"), "/admin");
        let reject = PathNormalization {
            escaped_slashes: EscapedSlashes::Reject,
            ..BASE
        };
        assert_eq!(
            normal(reject, "/a%2fb"),
            "refused: the path has an escaped slash"
        );
        assert_eq!(normal(reject, "/a%2eb"), "/a.b");
        let none = PathNormalization::default();
        assert_eq!(normal(none, "/x/../admin"), "/x/../admin");
    }

    #[test]
    fn the_uri_keeps_its_scheme_authority_and_query() {
        let mut uri: Uri = "http://echo.test:8080/a/../admin?x=1"
            .parse()
            .unwrap_or_default();
        assert_eq!(BASE.normalize_uri(&mut uri), Ok(()));
        assert_eq!(uri.to_string(), "http://echo.test:8080/admin?x=1");
        let mut origin: Uri = "/%61/./b".parse().unwrap_or_default();
        assert_eq!(BASE.normalize_uri(&mut origin), Ok(()));
        assert_eq!(origin.to_string(), "/a/b");
    }
}
