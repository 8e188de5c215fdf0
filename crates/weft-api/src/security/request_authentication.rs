//! `RequestAuthentication`: which JSON Web Tokens a workload accepts. A request with an
//! invalid token is refused with 401; a request without any token is let through with no
//! request identity (requiring one is an AuthorizationPolicy's job).

use serde::Deserialize;

use crate::Duration;
use crate::meta::{PolicyTargetReference, WorkloadSelector};

/// The `spec` of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestAuthentication {
    /// Workloads this applies to.
    pub selector: Option<WorkloadSelector>,
    /// A gateway or service this applies to, instead of `selector`.
    pub target_ref: Option<PolicyTargetReference>,
    /// Several targets, instead of `selector`.
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted token issuers.
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtRule {
    /// Token issuer (`iss`), required.
    pub issuer: String,
    /// Accepted audiences; the service's name when empty.
    pub audiences: Vec<String>,
    /// URL of the JSON Web Key Set.
    pub jwks_uri: Option<String>,
    /// Inline JSON Web Key Set.
    pub jwks: Option<String>,
    /// Headers the token may come in.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may come in.
    pub from_params: Vec<String>,
    /// Cookies the token may come in.
    pub from_cookies: Vec<String>,
    /// Header to receive the base64 payload.
    pub output_payload_to_header: Option<String>,
    /// Keep the token on the forwarded request.
    pub forward_original_token: bool,
    /// Copy claims into headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout for fetching the key set.
    pub timeout: Option<Duration>,
    /// Claims whose string values are space-separated lists.
    pub space_delimited_claims: Vec<String>,
}

/// `JWTHeader`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (`Bearer `).
    pub prefix: Option<String>,
}

/// `ClaimToHeader`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClaimToHeader {
    /// Header to set.
    pub header: String,
    /// Claim to copy.
    pub claim: String,
}
