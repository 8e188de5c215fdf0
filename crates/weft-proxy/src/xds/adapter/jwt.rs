//! The JWT filter of an HTTP connection manager (RequestAuthentication, as the control plane
//! sends it) into the port's [`JwtAuthn`]: its issuers with their keys, token locations and
//! outputs, and whether a request may come without a token. The one shape this proxy
//! enforces is Istio's: one rule for every path requiring any of the providers, or nothing
//! when the token is missing. Anything else (remote key sets, other requirements, claim
//! checks it would skip) rejects the listener; a key set that cannot be read leaves its
//! issuer without keys, so its tokens fail rather than pass.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::HeaderName;
use serde_json::Value;
use weft_xds::envoy::envoy::config::core::v3::data_source::Specifier;
use weft_xds::envoy::envoy::config::route::v3::route_match::PathSpecifier;
use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier;
use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider as ProtoProvider, JwtRequirement,
};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter::ConfigType,
};

use super::matcher::string_match;
use super::proto::decode_any;
use crate::model::authn::{
    AuthAttribute, AuthMatch, Jwk, JwtAuthn, JwtProvider, PublicKey, TokenLocations,
};

/// The name of Envoy's JWT filter.
pub(super) const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// Envoy's default clock skew for `exp` and `nbf`, in seconds.
const DEFAULT_CLOCK_SKEW: u64 = 60;

/// The JWT authentication of a connection manager; `None` without a JWT filter.
pub(super) fn manager_jwt(manager: &HttpConnectionManager) -> Result<Option<JwtAuthn>, String> {
    let mut found = None;
    for filter in manager.http_filters.iter().filter(|f| f.name == JWT_FILTER) {
        if found.is_some() {
            return Err("more than one JWT filter".to_string());
        }
        let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
            return Err("a JWT filter without configuration".to_string());
        };
        found = Some(authentication(&decode_any(any)?)?);
    }
    Ok(found)
}

fn authentication(config: &JwtAuthentication) -> Result<JwtAuthn, String> {
    if !config.requirement_map.is_empty() || config.filter_state_rules.is_some() {
        return Err("JWT requirement maps and filter-state rules are not supported".to_string());
    }
    let [rule] = config.rules.as_slice() else {
        return Err(format!(
            "a JWT filter needs exactly one rule, for every path; it has {}",
            config.rules.len()
        ));
    };
    let every_path = rule.r#match.as_ref().is_some_and(|m| {
        m.headers.is_empty()
            && m.query_parameters.is_empty()
            && matches!(&m.path_specifier, Some(PathSpecifier::Prefix(p)) if p.is_empty() || p == "/")
    });
    if !every_path {
        return Err("a JWT rule must match every path".to_string());
    }
    let Some(RequirementType::Requires(requirement)) = &rule.requirement_type else {
        return Err("a JWT rule must state its requirement".to_string());
    };
    let (names, allow_missing) = requirement_providers(requirement)?;
    let mut providers = Vec::new();
    for name in names {
        let provider = config
            .providers
            .get(&name)
            .ok_or_else(|| format!("JWT requirement names unknown provider {name:?}"))?;
        providers.push(provider_model(&name, provider)?);
    }
    providers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(JwtAuthn {
        providers,
        allow_missing,
        bypass_cors_preflight: config.bypass_cors_preflight,
    })
}

/// The providers a requirement accepts, and whether it lets a missing token through.
fn requirement_providers(requirement: &JwtRequirement) -> Result<(Vec<String>, bool), String> {
    match &requirement.requires_type {
        Some(RequiresType::ProviderName(name)) => Ok((vec![name.clone()], false)),
        Some(RequiresType::RequiresAny(any)) => {
            let (mut names, mut allow_missing) = (Vec::new(), false);
            for inner in &any.requirements {
                match &inner.requires_type {
                    Some(RequiresType::ProviderName(name)) => names.push(name.clone()),
                    Some(RequiresType::AllowMissing(_)) => allow_missing = true,
                    _ => return Err("unsupported JWT requirement inside requires_any".to_string()),
                }
            }
            Ok((names, allow_missing))
        }
        _ => Err("unsupported JWT requirement".to_string()),
    }
}

fn provider_model(name: &str, provider: &ProtoProvider) -> Result<JwtProvider, String> {
    if provider.subjects.is_some() || provider.require_expiration || provider.max_lifetime.is_some()
    {
        return Err(format!(
            "JWT provider {name:?}: subject, expiration and lifetime checks are not supported"
        ));
    }
    if provider.issuer.is_empty() {
        return Err(format!("JWT provider {name:?} has no issuer"));
    }
    let jwks = match &provider.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier {
            Some(Specifier::InlineString(text)) => text.clone(),
            Some(Specifier::InlineBytes(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => return Err(format!("JWT provider {name:?}: keys must be inline")),
        },
        _ => {
            return Err(format!(
                "JWT provider {name:?}: only inline key sets are supported (the control plane fetches jwksUri)"
            ));
        }
    };
    let keys = key_set(&jwks).unwrap_or_else(|error| {
        tracing::warn!(provider = name, issuer = %provider.issuer, %error, "unusable JWKS: every token of the issuer fails");
        Vec::new()
    });
    let header = |name: &str| {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("bad header name {name:?}"))
    };
    let mut locations = TokenLocations {
        params: provider.from_params.clone(),
        cookies: provider.from_cookies.clone(),
        headers: provider
            .from_headers
            .iter()
            .map(|h| Ok((header(&h.name)?, h.value_prefix.clone())))
            .collect::<Result<_, String>>()?,
    };
    if locations.headers.is_empty() && locations.params.is_empty() && locations.cookies.is_empty() {
        // Envoy's defaults.
        locations.headers = vec![(hyper::header::AUTHORIZATION, "Bearer ".to_string())];
        locations.params = vec!["access_token".to_string()];
    }
    Ok(JwtProvider {
        name: name.to_string(),
        issuer: provider.issuer.clone(),
        audiences: provider.audiences.clone(),
        keys,
        locations,
        forward: provider.forward,
        payload_header: Some(provider.forward_payload_header.as_str())
            .filter(|h| !h.is_empty())
            .map(header)
            .transpose()?,
        claim_headers: provider
            .claim_to_headers
            .iter()
            .map(|c| Ok((header(&c.header_name)?, c.claim_name.clone())))
            .collect::<Result<_, String>>()?,
        space_delimited: provider
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        clock_skew: match provider.clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW,
            seconds => u64::from(seconds),
        },
        cache: Default::default(),
    })
}

/// The usable public keys of a JSON Web Key Set; keys of a type this proxy cannot verify
/// are left out.
fn key_set(jwks: &str) -> Result<Vec<Jwk>, String> {
    let set: Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" list")?;
    let field = |key: &Value, name: &str| -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD
            .decode(key.get(name)?.as_str()?.trim_end_matches('='))
            .ok()
    };
    let text = |key: &Value, name: &str| key.get(name).and_then(Value::as_str).map(str::to_string);
    Ok(keys
        .iter()
        .filter(|key| text(key, "use").is_none_or(|u| u == "sig"))
        .filter_map(|key| {
            let public = match (text(key, "kty")?.as_str(), text(key, "crv").as_deref()) {
                ("RSA", _) => PublicKey::Rsa {
                    modulus: field(key, "n")?,
                    exponent: field(key, "e")?,
                },
                ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                    let (x, y) = (field(key, "x")?, field(key, "y")?);
                    let mut point = vec![4];
                    point.extend(x);
                    point.extend(y);
                    PublicKey::Ec {
                        curve: curve.to_string(),
                        point,
                    }
                }
                ("OKP", Some("Ed25519")) => PublicKey::Ed25519(field(key, "x")?),
                _ => return None,
            };
            Some(Jwk {
                kid: text(key, "kid"),
                alg: text(key, "alg"),
                key: public,
            })
        })
        .collect())
}

/// The filter whose metadata holds what a verified token says (Istio's names).
const AUTHN_METADATA: [&str; 2] = ["istio_authn", JWT_FILTER];

/// A condition on the verified token, as Envoy's metadata matcher on the `istio_authn`
/// keys: `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter`, or
/// `request.auth.claims` then the claim's path, with a string matcher or a list matcher of
/// one.
pub(super) fn auth_match(
    matcher: &weft_xds::envoy::envoy::r#type::matcher::v3::MetadataMatcher,
) -> Result<AuthMatch, String> {
    use weft_xds::envoy::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
    use weft_xds::envoy::envoy::r#type::matcher::v3::{list_matcher, value_matcher};
    if !AUTHN_METADATA.contains(&matcher.filter.as_str()) {
        return Err(format!(
            "metadata of filter {:?} cannot be matched",
            matcher.filter
        ));
    }
    let path: Vec<&str> = matcher
        .path
        .iter()
        .map(|segment| match &segment.segment {
            Some(Segment::Key(key)) => key.as_str(),
            None => "",
        })
        .collect();
    let attribute = match path.as_slice() {
        ["request.auth.principal"] => AuthAttribute::Principal,
        ["request.auth.audiences"] => AuthAttribute::Audiences,
        ["request.auth.presenter"] => AuthAttribute::Presenter,
        ["request.auth.claims", claim @ ..] if !claim.is_empty() => {
            AuthAttribute::Claim(claim.iter().map(|c| c.to_string()).collect())
        }
        _ => return Err(format!("metadata path {path:?} cannot be matched")),
    };
    let mut value = matcher.value.as_ref();
    if let Some(value_matcher::MatchPattern::ListMatch(list)) =
        value.and_then(|v| v.match_pattern.as_ref())
    {
        let Some(list_matcher::MatchPattern::OneOf(inner)) = &list.match_pattern else {
            return Err("a list matcher without one_of".to_string());
        };
        value = Some(inner);
    }
    let condition = match value.and_then(|v| v.match_pattern.as_ref()) {
        Some(value_matcher::MatchPattern::StringMatch(m)) => string_match(m)?,
        Some(value_matcher::MatchPattern::PresentMatch(true)) => crate::model::StringMatch::Present,
        _ => return Err("a metadata value matcher this proxy cannot evaluate".to_string()),
    };
    Ok(AuthMatch {
        attribute,
        condition,
        invert: matcher.invert,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use weft_xds::envoy::envoy::config::core::v3::DataSource;
    use weft_xds::envoy::envoy::config::route::v3::RouteMatch;
    use weft_xds::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtRequirementOrList, RemoteJwks, RequirementRule,
    };

    use super::*;

    fn requires(types: Vec<RequiresType>) -> JwtRequirement {
        JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: types
                    .into_iter()
                    .map(|t| JwtRequirement {
                        requires_type: Some(t),
                    })
                    .collect(),
            })),
        }
    }

    /// Istio's shape: one provider, one rule for every path, any provider or none.
    fn istio(jwks: Option<JwksSourceSpecifier>, requirement: JwtRequirement) -> JwtAuthentication {
        let provider = ProtoProvider {
            issuer: "https://issuer.test".to_string(),
            jwks_source_specifier: jwks,
            ..ProtoProvider::default()
        };
        JwtAuthentication {
            providers: [("origins-0".to_string(), provider)].into_iter().collect(),
            rules: vec![RequirementRule {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                    ..RouteMatch::default()
                }),
                requirement_type: Some(RequirementType::Requires(requirement)),
            }],
            ..JwtAuthentication::default()
        }
    }

    fn inline(text: &str) -> Option<JwksSourceSpecifier> {
        Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(text.to_string())),
            ..DataSource::default()
        }))
    }

    fn any_or_missing() -> JwtRequirement {
        requires(vec![
            RequiresType::ProviderName("origins-0".to_string()),
            RequiresType::AllowMissing(Default::default()),
        ])
    }

    #[test]
    fn istios_shape_is_taken_with_envoys_default_locations() {
        let jwt = authentication(&istio(inline(r#"{"keys":[]}"#), any_or_missing())).unwrap();
        assert!(jwt.allow_missing);
        let provider = &jwt.providers[0];
        assert_eq!(
            provider.locations.headers[0].0,
            hyper::header::AUTHORIZATION
        );
        assert_eq!(provider.locations.params, ["access_token"]);
        assert_eq!(provider.clock_skew, DEFAULT_CLOCK_SKEW);
    }

    #[test]
    fn shapes_it_cannot_enforce_are_refused() {
        let remote = Some(JwksSourceSpecifier::RemoteJwks(RemoteJwks::default()));
        assert!(authentication(&istio(remote, any_or_missing())).is_err());
        let lenient = requires(vec![
            RequiresType::ProviderName("origins-0".to_string()),
            RequiresType::AllowMissingOrFailed(Default::default()),
        ]);
        assert!(authentication(&istio(inline("{}"), lenient)).is_err());
        let unknown = requires(vec![RequiresType::ProviderName("origins-9".to_string())]);
        assert!(authentication(&istio(inline("{}"), unknown)).is_err());
        let mut two_rules = istio(inline("{}"), any_or_missing());
        two_rules.rules.push(two_rules.rules[0].clone());
        assert!(authentication(&two_rules).is_err());
        let mut no_rules = istio(inline("{}"), any_or_missing());
        no_rules.rules.clear();
        assert!(authentication(&no_rules).is_err());
    }

    #[test]
    fn a_key_set_that_cannot_be_read_leaves_no_keys() {
        let jwt = authentication(&istio(inline("not json"), any_or_missing())).unwrap();
        assert!(jwt.providers[0].keys.is_empty());
        let set = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"AQ","y":"Ag"},
            {"kty":"oct","k":"c2VjcmV0"},{"kty":"EC","crv":"P-521","x":"AQ","y":"Ag"}]}"#;
        let keys = key_set(set).unwrap();
        assert_eq!(keys.len(), 1, "symmetric and P-521 keys are left out");
        assert!(matches!(&keys[0].key, PublicKey::Ec { point, .. } if point == &[4, 1, 2]));
    }
}
