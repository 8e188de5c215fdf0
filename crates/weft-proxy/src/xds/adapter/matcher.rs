//! Envoy's string, header and regex matchers, as the routes and the RBAC policies use
//! them: regexes are compiled here, anchored to match whole values as Envoy's do.

use weft_xds::envoy::envoy::config::route::v3::HeaderMatcher;
use weft_xds::envoy::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use weft_xds::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

use regex::Regex;

use crate::model::{HeaderMatch, StringMatch};

/// A regex, anchored at both ends: Envoy's regexes match the whole value.
pub(super) fn regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("bad regex {pattern:?}: {e}"))
}

/// A header condition. A matcher this proxy does not know rejects the resource: read as
/// "anything", it would make a DENY deny nothing or an ALLOW allow everything.
#[allow(
    deprecated,
    reason = "older control planes still send the deprecated matchers"
)]
pub(super) fn header_match(h: &HeaderMatcher) -> Result<HeaderMatch, String> {
    let case = |pattern: MatchPattern| {
        string_match(&StringMatcher {
            match_pattern: Some(pattern),
            ..StringMatcher::default()
        })
    };
    let mut invert = h.invert_match;
    let condition = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => string_match(s)?,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => case(MatchPattern::Exact(s.clone()))?,
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => case(MatchPattern::Prefix(s.clone()))?,
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => case(MatchPattern::Suffix(s.clone()))?,
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => case(MatchPattern::Contains(s.clone()))?,
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => StringMatch::Regex(regex(&r.regex)?),
        // Envoy: no specifier means "present".
        None | Some(HeaderMatchSpecifier::PresentMatch(true)) => StringMatch::Present,
        Some(HeaderMatchSpecifier::PresentMatch(false)) => {
            invert = !invert;
            StringMatch::Present
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(format!(
                "header {:?}: range matches are not supported",
                h.name
            ));
        }
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        condition,
        invert,
        missing_is_empty: h.treat_missing_header_as_empty,
    })
}

/// A string condition, keeping its case rule for every pattern. One with no pattern, or
/// one this proxy does not know, is an error, never "anything".
pub(super) fn string_match(s: &StringMatcher) -> Result<StringMatch, String> {
    let escaped = |text: &str| regex::escape(text);
    Ok(match (&s.match_pattern, s.ignore_case) {
        (Some(MatchPattern::Exact(v)), false) => StringMatch::Exact(v.clone()),
        (Some(MatchPattern::Prefix(v)), false) => StringMatch::Prefix(v.clone()),
        (Some(MatchPattern::Suffix(v)), false) => StringMatch::Suffix(v.clone()),
        (Some(MatchPattern::Contains(v)), false) => StringMatch::Contains(v.clone()),
        (Some(MatchPattern::Exact(v)), true) => {
            StringMatch::Regex(regex(&format!("(?i){}", escaped(v)))?)
        }
        (Some(MatchPattern::Prefix(v)), true) => {
            StringMatch::Regex(regex(&format!("(?i){}.*", escaped(v)))?)
        }
        (Some(MatchPattern::Suffix(v)), true) => {
            StringMatch::Regex(regex(&format!("(?is).*{}", escaped(v)))?)
        }
        (Some(MatchPattern::Contains(v)), true) => {
            StringMatch::Regex(regex(&format!("(?is).*{}.*", escaped(v)))?)
        }
        // Envoy ignores ignore_case for regexes.
        (Some(MatchPattern::SafeRegex(r)), _) => StringMatch::Regex(regex(&r.regex)?),
        (Some(MatchPattern::Custom(custom)), _) => {
            return Err(format!(
                "custom string matcher {:?} is not supported",
                custom.name
            ));
        }
        (None, _) => return Err("a string matcher has no pattern".to_string()),
    })
}
