//! Request authentication (RequestAuthentication, as the JWT filter the control plane sends):
//! the token issuers a port accepts, where their tokens are looked for, the keys that sign
//! them and what a verified token adds to the request. Tokens are verified by the `authn`
//! module.

use hyper::header::HeaderName;
use serde::Serialize;

/// The JWT authentication of one HTTP port.
#[derive(Debug, Serialize)]
pub struct JwtAuthn {
    /// The accepted issuers; a token must verify with one of them.
    pub providers: Vec<JwtProvider>,
    /// Whether a request without any token passes (with no request identity). Istio always
    /// lets it: requiring a token is an AuthorizationPolicy's job.
    pub allow_missing: bool,
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
    #[serde(serialize_with = "claim_headers")]
    pub claim_headers: Vec<(HeaderName, String)>,
    /// Claims whose string value is a space-separated list (`scope`): policies and routes
    /// match each item.
    pub space_delimited: Vec<String>,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    pub clock_skew: u64,
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
    #[serde(serialize_with = "prefixed_headers")]
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

fn claim_headers<S: serde::Serializer>(
    headers: &[(HeaderName, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        headers
            .iter()
            .map(|(header, claim)| (header.as_str(), claim)),
    )
}

fn prefixed_headers<S: serde::Serializer>(
    headers: &[(HeaderName, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    claim_headers(headers, serializer)
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
