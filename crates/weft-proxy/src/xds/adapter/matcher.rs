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

/// A header condition.
#[allow(
    deprecated,
    reason = "older control planes still send the deprecated matchers"
)]
pub(super) fn header_match(h: &HeaderMatcher) -> Result<HeaderMatch, String> {
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        condition: match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => string_match(s)?,
            Some(HeaderMatchSpecifier::ExactMatch(s)) => StringMatch::Exact(s.clone()),
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => StringMatch::Prefix(s.clone()),
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => StringMatch::Regex(regex(&r.regex)?),
            _ => StringMatch::Present,
        },
        invert: h.invert_match,
        missing_is_empty: h.treat_missing_header_as_empty,
    })
}

/// A string condition.
pub(super) fn string_match(s: &StringMatcher) -> Result<StringMatch, String> {
    let case = |text: &str| regex::escape(text);
    Ok(match (&s.match_pattern, s.ignore_case) {
        (Some(MatchPattern::Exact(v)), true) => {
            StringMatch::Regex(regex(&format!("(?i){}", case(v)))?)
        }
        (Some(MatchPattern::Prefix(v)), true) => {
            StringMatch::Regex(regex(&format!("(?i){}.*", case(v)))?)
        }
        (Some(MatchPattern::Exact(v)), false) => StringMatch::Exact(v.clone()),
        (Some(MatchPattern::Prefix(v)), false) => StringMatch::Prefix(v.clone()),
        (Some(MatchPattern::Suffix(v)), _) => StringMatch::Suffix(v.clone()),
        (Some(MatchPattern::Contains(v)), _) => StringMatch::Contains(v.clone()),
        (Some(MatchPattern::SafeRegex(r)), _) => StringMatch::Regex(regex(&r.regex)?),
        _ => StringMatch::Present,
    })
}
