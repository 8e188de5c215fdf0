//! Request authentication (RequestAuthentication, as the JWT filter the control plane sends):
//! the token issuers a port accepts, where their tokens are looked for, the keys that sign
//! them and what a verified token adds to the request. Tokens are verified by the `authn`
//! module.

use std::sync::{Arc, Mutex};

use foldhash::HashMap;
use hyper::header::HeaderName;
use serde::Serialize;
use serde_json::{Map, Value};

/// The JWT authentication of one HTTP port.
#[derive(Debug, Serialize)]
pub struct JwtAuthn {
    /// The accepted issuers; a token must verify with one of them.
    pub providers: Vec<JwtProvider>,
    /// Whether a request without any token passes (with no request identity). Istio always
    /// lets it: requiring a token is an AuthorizationPolicy's job.
    pub allow_missing: bool,
    /// Whether CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) pass unverified, as Istio asks: a browser sends them
    /// without credentials. Authorization still applies to them.
    pub bypass_cors_preflight: bool,
}

/// One accepted issuer.
#[derive(Debug, Serialize)]
pub struct JwtProvider {
    /// Its name in the filter (`origins-0`, …).
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Audiences of which a token must name one; any audience when empty.
    pub audiences: Vec<String>,
    /// Its signing keys (the JWKS); none when the set could not be fetched, so that every
    /// token of the issuer fails.
    pub keys: Vec<Jwk>,
    /// Where its tokens are looked for.
    pub locations: TokenLocations,
    /// Whether the token stays on the forwarded request.
    pub forward: bool,
    /// The header that receives the token's payload, base64url-encoded.
    #[serde(serialize_with = "header_names")]
    pub payload_header: Option<HeaderName>,
    /// Headers that receive a claim's value.
    #[serde(serialize_with = "header_pairs")]
    pub claim_headers: Vec<(HeaderName, String)>,
    /// Claims whose string value is a space-separated list (`scope`): policies and routes
    /// match each item.
    pub space_delimited: Vec<String>,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    pub clock_skew: u64,
    /// The tokens it has verified; it goes with the provider, so a new key set starts
    /// empty.
    #[serde(skip)]
    pub cache: TokenCache,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestIdentity {
    /// `<iss>/<sub>`, Istio's request principal.
    pub principal: String,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `azp`, the party the token was issued to.
    pub presenter: Option<String>,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
    /// Claims whose string value is a space-separated list.
    pub space_delimited: Vec<String>,
}

/// Tokens a provider has verified, by the token: at most [`TokenCache::CAPACITY`], all
/// forgotten when it is full.
#[derive(Debug, Default)]
pub struct TokenCache(Mutex<HashMap<String, CachedToken>>);

/// A verified token: who it names, and when it is valid.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// Its identity.
    pub identity: Arc<RequestIdentity>,
    /// `exp`.
    pub expires: Option<u64>,
    /// `nbf`.
    pub not_before: Option<u64>,
}

impl TokenCache {
    /// How many tokens it keeps.
    pub const CAPACITY: usize = 256;

    /// The token, if it was verified.
    pub fn get(&self, token: &str) -> Option<CachedToken> {
        self.0.lock().ok()?.get(token).cloned()
    }

    /// Keeps a verified token.
    pub fn insert(&self, token: &str, cached: CachedToken) {
        if let Ok(mut tokens) = self.0.lock() {
            if tokens.len() >= Self::CAPACITY {
                tokens.clear();
            }
            tokens.insert(token.to_string(), cached);
        }
    }
}

impl JwtProvider {
    /// Every header this provider sets on a request: a client's own copies are removed
    /// before verification, so only a verified token can set them.
    pub fn output_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.payload_header
            .iter()
            .chain(self.claim_headers.iter().map(|(header, _)| header))
    }
}

/// Where a provider's tokens are.
#[derive(Debug, Default, Serialize)]
pub struct TokenLocations {
    /// Headers, each with the prefix before the token (`Bearer `).
    #[serde(serialize_with = "header_pairs")]
    pub headers: Vec<(HeaderName, String)>,
    /// Query parameters.
    pub params: Vec<String>,
    /// Cookies.
    pub cookies: Vec<String>,
}

/// A public key of a JSON Web Key Set.
#[derive(Debug, Serialize)]
pub struct Jwk {
    /// Its `kid`; a token naming a `kid` is checked only against keys of that `kid`.
    pub kid: Option<String>,
    /// Its `alg`, when the set pins one.
    pub alg: Option<String>,
    /// The key.
    #[serde(skip)]
    pub key: PublicKey,
}

/// The key material, by type.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA: modulus and exponent, big-endian (RS256/384/512, PS256/384/512).
    Rsa {
        /// `n`.
        modulus: Vec<u8>,
        /// `e`.
        exponent: Vec<u8>,
    },
    /// An elliptic-curve point, uncompressed (`04 || x || y`), on P-256 (ES256) or P-384
    /// (ES384).
    Ec {
        /// The curve: `P-256` or `P-384`.
        curve: String,
        /// The point.
        point: Vec<u8>,
    },
    /// An Ed25519 public key (EdDSA).
    Ed25519(Vec<u8>),
}

fn header_names<S: serde::Serializer>(
    header: &Option<HeaderName>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(header.iter().map(HeaderName::as_str))
}

/// Headers, each with a text (a claim, a prefix), for the config dump.
fn header_pairs<S: serde::Serializer>(
    headers: &[(HeaderName, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(headers.iter().map(|(header, text)| (header.as_str(), text)))
}

/// A condition on the request's verified token: `requestPrincipals` and `request.auth.*` in
/// authorization, `@request.auth.claims` in routes.
#[derive(Debug, Serialize)]
pub struct AuthMatch {
    /// What of the token it reads.
    pub attribute: AuthAttribute,
    /// What that must be (one item of it, for a list).
    pub condition: super::StringMatch,
    /// Holds when the condition does not (a request without a token included).
    pub invert: bool,
}

/// An attribute of a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AuthAttribute {
    /// `<iss>/<sub>`.
    Principal,
    /// `aud`.
    Audiences,
    /// `azp`.
    Presenter,
    /// A claim, by its path (`[a, b]`: claim `b` inside claim `a`).
    Claim(Vec<String>),
}
