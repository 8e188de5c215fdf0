//! Request authentication for one workload (or gateway): the RequestAuthentications that
//! apply to it, as Envoy's JWT filter in Istio's shape — one provider per `jwtRules` entry
//! (`origins-<n>`), the key set inline (fetched by [`crate::jwks`] where a rule names
//! `jwksUri`; empty until fetched, so those tokens fail), and one rule for every path that
//! requires any provider or no token at all. A request without a token passes with no
//! identity; requiring one is an AuthorizationPolicy's job. What a verified token says is
//! read by policies and routes as Istio's `istio_authn` metadata ([`auth_metadata`]).

use weft_api::security::request_authentication::JwtRule;
use weft_xds::envoy::envoy::config::core::v3::{DataSource, data_source};
use weft_xds::envoy::envoy::config::route::v3::{RouteMatch, route_match::PathSpecifier};
use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, StringMatcher, ValueMatcher, list_matcher, metadata_matcher,
    value_matcher,
};
use weft_xds::types::{pack, proto_map};

use super::authz::Workload;
use crate::model::MeshSnapshot;

/// The filter name Istio's policies read a verified token's attributes under.
pub(crate) const AUTHN_METADATA: &str = "istio_authn";

/// Claims whose string value Istio always reads as a space-separated list.
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// A key set with no keys: what a `jwksUri` not fetched (yet) stands for.
const NO_KEYS: &str = r#"{"keys":[]}"#;

/// The JWT filter for `workload`, in front of its RBAC filters; `None` when no
/// RequestAuthentication applies to it.
pub(crate) fn jwt_filter(snapshot: &MeshSnapshot, workload: &Workload<'_>) -> Option<HttpFilter> {
    let rules: Vec<&JwtRule> = snapshot
        .request_authentications
        .iter()
        .filter(|(resource, ra)| {
            let targeted = ra.target_ref.is_some() || !ra.target_refs.is_empty();
            workload.selected_by(resource.namespace(), ra.selector.as_ref(), targeted)
        })
        .flat_map(|(_, ra)| &ra.jwt_rules)
        .collect();
    if rules.is_empty() {
        return None;
    }
    let providers: Vec<(String, JwtProvider)> = rules
        .iter()
        .enumerate()
        .map(|(index, rule)| (format!("origins-{index}"), provider(snapshot, rule)))
        .collect();
    let mut requirements: Vec<JwtRequirement> = providers
        .iter()
        .map(|(name, _)| JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name.clone())),
        })
        .collect();
    requirements.push(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    });
    let config = JwtAuthentication {
        providers: proto_map(providers),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                ..RouteMatch::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                        JwtRequirementOrList { requirements },
                    )),
                },
            )),
        }],
        // Browsers send CORS preflights without credentials (Istio sets this too).
        bypass_cors_preflight: true,
        ..JwtAuthentication::default()
    };
    Some(HttpFilter {
        name: "envoy.filters.http.jwt_authn".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..HttpFilter::default()
    })
}

fn provider(snapshot: &MeshSnapshot, rule: &JwtRule) -> JwtProvider {
    let jwks = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => inline.clone(),
        (None, Some(uri)) => snapshot
            .key_sets
            .get(uri)
            .cloned()
            .unwrap_or_else(|| NO_KEYS.to_string()),
        (None, None) => NO_KEYS.to_string(),
    };
    let mut space_delimited: Vec<String> = SPACE_DELIMITED.map(str::to_string).to_vec();
    for claim in &rule.space_delimited_claims {
        if !space_delimited.contains(claim) {
            space_delimited.push(claim.clone());
        }
    }
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
            })
            .collect(),
        payload_in_metadata: rule.issuer.clone(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: space_delimited,
        }),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks)),
            ..DataSource::default()
        })),
        ..JwtProvider::default()
    }
}

/// A condition on a verified token's attribute: `path` under Istio's metadata
/// (`request.auth.principal`, or `request.auth.claims` then a claim's path), matched by
/// `matcher` — as one item of a list for claims, which may be lists.
pub(crate) fn auth_metadata(
    path: &[&str],
    matcher: StringMatcher,
    invert: bool,
) -> MetadataMatcher {
    let string = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(matcher)),
    };
    let value = if path.first() == Some(&"request.auth.claims") {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string))),
                },
            ))),
        }
    } else {
        string
    };
    MetadataMatcher {
        filter: AUTHN_METADATA.to_string(),
        path: path
            .iter()
            .map(|key| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(
                    key.to_string(),
                )),
            })
            .collect(),
        value: Some(value),
        invert,
    }
}

/// The claim path of a VirtualService header key naming a JWT claim:
/// `@request.auth.claims.<a>.<b>` or `@request.auth.claims[<a>][<b>]`; `None` for other keys.
pub(crate) fn claim_path(key: &str) -> Option<Vec<String>> {
    let rest = key.strip_prefix("@request.auth.claims")?;
    let path: Vec<String> = if let Some(dotted) = rest.strip_prefix('.') {
        dotted.split('.').map(str::to_string).collect()
    } else {
        bracketed(rest)?
    };
    (!path.is_empty() && path.iter().all(|p| !p.is_empty())).then_some(path)
}

/// The names in `[a][b]…`; `None` unless the text is only that.
pub(crate) fn bracketed(mut text: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !text.is_empty() {
        let inner = text.strip_prefix('[')?;
        let end = inner.find(']')?;
        names.push(inner[..end].to_string());
        text = &inner[end + 1..];
    }
    Some(names)
}
