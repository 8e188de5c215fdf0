//! Istio's certificate API (`istio.v1.auth.IstioCertificateService`): the control plane
//! serves it, proxies (and Istio's own agents) call it with a CSR. The two messages are
//! written here by hand (they are small and stable); the client and server code is generated
//! by `build.rs`.

#![allow(missing_docs, reason = "generated gRPC plumbing")]

use envoy_types::pb::google::protobuf::Struct;

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The PEM-encoded CSR; its only SAN is the workload's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; the CA's default when 0, capped at its maximum.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Options; not used by Weft.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

/// The signed certificate: the leaf first, then the chain up to and including the root.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

include!(concat!(
    env!("OUT_DIR"),
    "/istio.v1.auth.IstioCertificateService.rs"
));
