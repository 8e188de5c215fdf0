//! Request authentication (RequestAuthentication): the JSON Web Tokens of a request, found
//! where the port's issuers say, verified against their keys, as Envoy's JWT filter does
//! with Istio's settings. A request without a token passes with no identity; a token that
//! does not verify gets `401`. A verified token becomes the request's [`RequestIdentity`],
//! in its extensions, which authorization (`requestPrincipals`, `request.auth.*`) and the
//! routes (`@request.auth.claims`) read. The issuers and keys are
//! [`crate::model::authn`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::{COOKIE, HeaderValue};
use hyper::http::request::Parts;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

pub use crate::model::authn::RequestIdentity;
use crate::model::authn::{
    AuthAttribute, AuthMatch, CachedToken, JwtAuthn, JwtProvider, PublicKey,
};

impl RequestIdentity {
    /// Whether an item of the claim at `path` (`[a, b]` is claim `b` inside claim `a`)
    /// satisfies `test`: a string claim is one item (or, space-delimited, each word), a list
    /// claim each of its strings; an absent claim none.
    fn claim_any(&self, path: &[String], test: impl Fn(&str) -> bool) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        let mut value = self.claims.get(first);
        for key in rest {
            value = value.and_then(Value::as_object).and_then(|o| o.get(key));
        }
        match value {
            Some(Value::String(s)) if rest.is_empty() && self.space_delimited.contains(first) => {
                s.split(' ').filter(|item| !item.is_empty()).any(test)
            }
            Some(Value::String(s)) => test(s),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(test),
            _ => false,
        }
    }
}

impl AuthMatch {
    /// Whether the request's verified token (`None`: it has none) satisfies the condition.
    pub fn matches(&self, identity: Option<&RequestIdentity>) -> bool {
        let Some(identity) = identity else {
            return self.invert;
        };
        let test = |value: &str| self.condition.matches(Some(value));
        let found = match &self.attribute {
            AuthAttribute::Principal => test(&identity.principal),
            AuthAttribute::Audiences => identity.audiences.iter().any(|a| test(a)),
            AuthAttribute::Presenter => identity.presenter.as_deref().is_some_and(test),
            AuthAttribute::Claim(path) => identity.claim_any(path, test),
        };
        found != self.invert
    }
}

/// The verified identity of a request, if it has one.
pub fn identity(parts: &Parts) -> Option<&RequestIdentity> {
    parts
        .extensions
        .get::<Arc<RequestIdentity>>()
        .map(Arc::as_ref)
}

/// Why a token was refused (the body of the `401`, in Envoy's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// There is no token and one is required.
    #[error("Jwt is missing")]
    Missing,
    /// The token is not a signed JWT (three base64url parts, JSON header and payload).
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// `alg` is one this proxy does not verify (`none` included).
    #[error("Jwt algorithm is not supported")]
    UnsupportedAlgorithm,
    /// No provider accepts the token's `iss`.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The token names none of the accepted audiences.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    /// `exp` has passed.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// No key of the issuer verifies the signature.
    #[error("Jwt verification fails")]
    Signature,
}

impl JwtAuthn {
    /// Authenticates a request: removes the headers only a verified token may set, looks
    /// for each issuer's tokens, and verifies them. With one verified, the request gets its
    /// identity and the issuer's output headers, and loses the token unless it is
    /// forwarded; with none present it passes as it is (if missing tokens are allowed).
    pub fn authenticate(&self, parts: &mut Parts) -> Result<(), JwtError> {
        parts.extensions.remove::<Arc<RequestIdentity>>();
        for header in self.providers.iter().flat_map(JwtProvider::output_headers) {
            parts.headers.remove(header);
        }
        if self.bypass_cors_preflight && is_cors_preflight(parts) {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut failure = None;
        for provider in &self.providers {
            for (token, header) in provider.tokens(parts) {
                match provider.verified(&token, now) {
                    Ok(identity) => {
                        provider.apply(parts, &identity, &token, header.as_ref());
                        parts.extensions.insert(identity);
                        return Ok(());
                    }
                    Err(error) => failure = Some(error),
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None if self.allow_missing => Ok(()),
            None => Err(JwtError::Missing),
        }
    }
}

/// Whether the request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
fn is_cors_preflight(parts: &Parts) -> bool {
    parts.method == hyper::Method::OPTIONS
        && parts.headers.contains_key(hyper::header::ORIGIN)
        && parts
            .headers
            .contains_key(hyper::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl JwtProvider {
    /// The provider's tokens in the request, each with the header it came in (if any).
    fn tokens(&self, parts: &Parts) -> Vec<(String, Option<hyper::header::HeaderName>)> {
        let mut tokens = Vec::new();
        for (name, prefix) in &self.locations.headers {
            for value in parts.headers.get_all(name) {
                let Ok(value) = value.to_str() else { continue };
                let value = value.trim();
                if value.len() >= prefix.len()
                    && value.is_char_boundary(prefix.len())
                    && value[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    tokens.push((value[prefix.len()..].trim().to_string(), Some(name.clone())));
                }
            }
        }
        if let Some(query) = parts.uri.query() {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if self.locations.params.iter().any(|p| p == name) {
                    tokens.push((value.to_string(), None));
                }
            }
        }
        for cookies in parts.headers.get_all(COOKIE) {
            let Ok(cookies) = cookies.to_str() else {
                continue;
            };
            for cookie in cookies.split(';') {
                let (name, value) = cookie.trim().split_once('=').unwrap_or((cookie, ""));
                if self.locations.cookies.iter().any(|c| c == name) {
                    tokens.push((value.trim_matches('"').to_string(), None));
                }
            }
        }
        tokens.retain(|(token, _)| !token.is_empty());
        tokens
    }

    /// `token`'s identity at `now`: from the tokens this provider verified before (their
    /// times checked again), else verified and kept. A client sending the same token again
    /// costs a lookup, not a signature check (Envoy's JWT cache).
    fn verified(&self, token: &str, now: u64) -> Result<Arc<RequestIdentity>, JwtError> {
        if let Some(cached) = self.cache.get(token) {
            self.check_times(cached.expires, cached.not_before, now)?;
            return Ok(cached.identity);
        }
        let (identity, expires, not_before) = self.verify(token, now)?;
        let identity = Arc::new(identity);
        self.cache.insert(
            token,
            CachedToken {
                identity: identity.clone(),
                expires,
                not_before,
            },
        );
        Ok(identity)
    }

    /// Whether a token with these `exp` and `nbf` is valid at `now`, with the clock skew.
    fn check_times(
        &self,
        expires: Option<u64>,
        not_before: Option<u64>,
        now: u64,
    ) -> Result<(), JwtError> {
        if expires.is_some_and(|exp| now > exp.saturating_add(self.clock_skew)) {
            return Err(JwtError::Expired);
        }
        if not_before.is_some_and(|nbf| now.saturating_add(self.clock_skew) < nbf) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// Verifies `token` at `now` (seconds since the epoch): its issuer, signature, times
    /// and audience. Gives the identity, `exp` and `nbf`.
    fn verify(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(RequestIdentity, Option<u64>, Option<u64>), JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let json = |part: &str| -> Result<Map<String, Value>, JwtError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(JwtError::Malformed),
            }
        };
        let (header_json, claims) = (json(header)?, json(payload)?);
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::Malformed)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let alg = header_json
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed)?;
        let kid = header_json.get("kid").and_then(Value::as_str);
        let signed = &token[..header.len() + 1 + payload.len()];
        self.verify_signature(alg, kid, signed.as_bytes(), &signature)?;
        let time = |name: &str| -> Result<Option<u64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_u64()
                    .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or(JwtError::Malformed),
            }
        };
        let (expires, not_before) = (time("exp")?, time("nbf")?);
        self.check_times(expires, not_before, now)?;
        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        if !self.audiences.is_empty() && !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(JwtError::Audience);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let identity = RequestIdentity {
            principal: format!("{}/{subject}", self.issuer),
            audiences,
            presenter: claims
                .get("azp")
                .and_then(Value::as_str)
                .map(str::to_string),
            claims,
            space_delimited: self.space_delimited.clone(),
        };
        Ok((identity, expires, not_before))
    }

    /// Whether one of the keys that may have signed it (its `kid`, a type fit for `alg`)
    /// verifies `signature` over `signed`.
    fn verify_signature(
        &self,
        alg: &str,
        kid: Option<&str>,
        signed: &[u8],
        signature: &[u8],
    ) -> Result<(), JwtError> {
        let rsa: Option<&'static signature::RsaParameters> = match alg {
            "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
            "PS384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
            "PS512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
            _ => None,
        };
        let other: Option<(&'static dyn VerificationAlgorithm, Option<&str>)> = match alg {
            "ES256" => Some((&signature::ECDSA_P256_SHA256_FIXED, Some("P-256"))),
            "ES384" => Some((&signature::ECDSA_P384_SHA384_FIXED, Some("P-384"))),
            "EdDSA" => Some((&signature::ED25519, None)),
            _ => None,
        };
        if rsa.is_none() && other.is_none() {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let candidates = self.keys.iter().filter(|key| {
            kid.is_none_or(|kid| key.kid.as_deref().is_none_or(|k| k == kid))
                && key.alg.as_deref().is_none_or(|a| a == alg)
        });
        for key in candidates {
            let verified = match (&key.key, rsa, other) {
                (PublicKey::Rsa { modulus, exponent }, Some(parameters), _) => {
                    signature::RsaPublicKeyComponents {
                        n: modulus,
                        e: exponent,
                    }
                    .verify(parameters, signed, signature)
                    .is_ok()
                }
                (PublicKey::Ec { curve, point }, _, Some((algorithm, Some(wanted))))
                    if curve == wanted =>
                {
                    UnparsedPublicKey::new(algorithm, point)
                        .verify(signed, signature)
                        .is_ok()
                }
                (PublicKey::Ed25519(point), _, Some((algorithm, None))) => {
                    UnparsedPublicKey::new(algorithm, point)
                        .verify(signed, signature)
                        .is_ok()
                }
                _ => false,
            };
            if verified {
                return Ok(());
            }
        }
        Err(JwtError::Signature)
    }

    /// What a verified token does to the request: the payload and claim headers, and the
    /// token removed from `header` unless it is forwarded.
    fn apply(
        &self,
        parts: &mut Parts,
        identity: &RequestIdentity,
        token: &str,
        header: Option<&hyper::header::HeaderName>,
    ) {
        let payload = token.split('.').nth(1).unwrap_or_default();
        if !self.forward
            && let Some(header) = header
        {
            parts.headers.remove(header);
        }
        if let Some(name) = &self.payload_header
            && let Ok(value) = HeaderValue::from_str(payload)
        {
            parts.headers.insert(name.clone(), value);
        }
        for (name, claim) in &self.claim_headers {
            let value = match identity.claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => continue,
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                parts.headers.insert(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use hyper::header::HeaderName;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    use super::*;
    use crate::model::authn::{Jwk, TokenLocations};

    struct Signer(EcdsaKeyPair);

    impl Signer {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Signer(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            )
        }

        fn token(&self, header: Value, claims: Value) -> String {
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = self
                .0
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }

        fn provider(&self, kid: &str) -> JwtProvider {
            JwtProvider {
                name: "origins-0".to_string(),
                issuer: "iss".to_string(),
                audiences: vec!["a".to_string()],
                keys: vec![Jwk {
                    kid: Some(kid.to_string()),
                    alg: None,
                    key: PublicKey::Ec {
                        curve: "P-256".to_string(),
                        point: self.0.public_key().as_ref().to_vec(),
                    },
                }],
                locations: TokenLocations {
                    headers: vec![(hyper::header::AUTHORIZATION, "Bearer ".to_string())],
                    ..TokenLocations::default()
                },
                forward: false,
                payload_header: None,
                claim_headers: vec![(HeaderName::from_static("x-sub"), "sub".to_string())],
                space_delimited: vec!["scope".to_string()],
                clock_skew: 60,
                cache: Default::default(),
            }
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn claims(exp: u64) -> Value {
        json!({"iss": "iss", "sub": "s", "aud": ["x", "a"], "exp": exp, "scope": "read write"})
    }

    #[test]
    fn keys_are_chosen_by_kid_and_algorithm() {
        let signer = Signer::new();
        let provider = signer.provider("k1");
        let es256 = json!({"alg": "ES256", "kid": "k1"});
        let token = signer.token(es256, claims(NOW + 10));
        let (identity, _, _) = provider.verify(&token, NOW).unwrap();
        assert_eq!(identity.principal, "iss/s");
        assert_eq!(identity.audiences, ["x", "a"]);
        let scope = |word: &'static str| move |v: &str| v == word;
        assert!(identity.claim_any(&["scope".to_string()], scope("write")));
        assert!(!identity.claim_any(&["scope".to_string()], scope("read write")));
        let other_kid = signer.token(json!({"alg": "ES256", "kid": "k2"}), claims(NOW + 10));
        assert_eq!(provider.verify(&other_kid, NOW), Err(JwtError::Signature));
        let wrong_alg = signer.token(json!({"alg": "ES384", "kid": "k1"}), claims(NOW + 10));
        assert_eq!(provider.verify(&wrong_alg, NOW), Err(JwtError::Signature));
        let hmac = signer.token(json!({"alg": "HS256"}), claims(NOW + 10));
        assert_eq!(
            provider.verify(&hmac, NOW),
            Err(JwtError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn a_verified_token_is_kept_and_its_times_checked_again() {
        let signer = Signer::new();
        let provider = signer.provider("k1");
        let token = signer.token(json!({"alg": "ES256"}), claims(NOW + 10));
        let first = provider.verified(&token, NOW).unwrap();
        assert!(provider.cache.get(&token).is_some());
        assert!(Arc::ptr_eq(
            &first,
            &provider.verified(&token, NOW).unwrap()
        ));
        assert_eq!(
            provider.verified(&token, NOW + 3600).map(|_| ()),
            Err(JwtError::Expired),
            "a kept token expires"
        );
        let forged = format!("{token}x");
        assert!(
            provider.verified(&forged, NOW).is_err(),
            "only the exact token is kept"
        );
    }

    #[test]
    fn times_allow_the_clock_skew() {
        let signer = Signer::new();
        let provider = signer.provider("k1");
        let header = json!({"alg": "ES256"});
        let late = signer.token(header.clone(), claims(NOW - 30));
        assert!(provider.verify(&late, NOW).is_ok());
        let expired = signer.token(header.clone(), claims(NOW - 120));
        assert_eq!(provider.verify(&expired, NOW), Err(JwtError::Expired));
        let mut future = claims(NOW + 600);
        future["nbf"] = json!(NOW + 120);
        let early = signer.token(header, future);
        assert_eq!(provider.verify(&early, NOW), Err(JwtError::NotYetValid));
    }

    #[test]
    fn a_verified_token_sets_the_outputs_and_only_it_can() {
        let signer = Signer::new();
        let authn = JwtAuthn {
            providers: vec![signer.provider("k1")],
            allow_missing: false,
            bypass_cors_preflight: true,
        };
        let token = signer.token(json!({"alg": "ES256"}), claims(u64::MAX / 2));
        let mut parts = hyper::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .header("x-sub", "forged")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        authn.authenticate(&mut parts).unwrap();
        assert_eq!(parts.headers["x-sub"], "s");
        assert!(!parts.headers.contains_key("authorization"));
        assert_eq!(identity(&parts).unwrap().principal, "iss/s");

        let mut forged = hyper::Request::get("/")
            .header("x-sub", "forged")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(authn.authenticate(&mut forged), Err(JwtError::Missing));
        assert!(!forged.headers.contains_key("x-sub"));

        let mut preflight = hyper::Request::options("/")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("x-sub", "forged")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(
            authn.authenticate(&mut preflight),
            Ok(()),
            "a preflight passes"
        );
        assert!(identity(&preflight).is_none());
        assert!(!preflight.headers.contains_key("x-sub"));
    }
}
