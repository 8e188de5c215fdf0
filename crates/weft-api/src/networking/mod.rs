//! `networking.istio.io` resources: how traffic is routed and what policy applies to it.
//!
//! One module per kind; each type is named after the protobuf message Istio defines it with
//! (`HTTPRoute` becomes [`virtual_service::HttpRoute`]) and its fields keep Istio's camelCase
//! names in YAML. Every field is optional in the YAML, as in Istio's protos; validation
//! decides what is required.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;

use serde::Deserialize;

/// `PortSelector`: a port of a destination service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSelector {
    /// The port number.
    pub number: u32,
}

/// `Percent`: a percentage as a double in `[0, 100]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

/// `Port` of a Gateway server, a ServiceEntry or a Sidecar listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Port {
    /// The port number.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`.
    pub protocol: String,
    /// A label for the port.
    pub name: String,
    /// The port on the endpoint, when it differs from `number`.
    pub target_port: Option<u32>,
}

/// The protocols Istio accepts on a `Port`, upper case.
pub const PORT_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP",
];

/// `ServerTLSSettings`: TLS a Gateway or Sidecar listener terminates.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerTlsSettings {
    /// Answer plain HTTP with a 301 to HTTPS.
    pub https_redirect: bool,
    /// How TLS is handled.
    pub mode: Option<ServerTlsMode>,
    /// Path to the server certificate.
    pub server_certificate: String,
    /// Path to the server's private key.
    pub private_key: String,
    /// Path to the CA bundle used to verify clients.
    pub ca_certificates: String,
    /// Path to a certificate revocation list.
    pub ca_crl: String,
    /// Name of a secret holding the key and certificate.
    pub credential_name: String,
    /// Several secrets (one RSA, one ECDSA).
    pub credential_names: Vec<String>,
    /// Name of a secret holding the client CA bundle.
    pub ca_cert_credential_name: String,
    /// Inline certificate and key pairs.
    pub tls_certificates: Vec<TlsCertificate>,
    /// Allowed client SANs.
    pub subject_alt_names: Vec<String>,
    /// Allowed client certificate SPKI hashes.
    pub verify_certificate_spki: Vec<String>,
    /// Allowed client certificate hashes.
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version offered.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Highest TLS version offered.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Allowed cipher suites.
    pub cipher_suites: Vec<String>,
}

/// One certificate and key of `tlsCertificates`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsCertificate {
    /// Path to the certificate.
    pub server_certificate: String,
    /// Path to the private key.
    pub private_key: String,
    /// Path to the CA bundle.
    pub ca_certificates: String,
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS stream untouched, routed by SNI.
    Passthrough,
    /// Terminate TLS with a server certificate.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough with SNI-derived routing (multi-cluster east-west).
    AutoPassthrough,
    /// Terminate mesh mTLS with the workload's own certificate.
    IstioMutual,
    /// Ask for a client certificate but accept connections without one.
    OptionalMutual,
}

/// `ServerTLSSettings.TLSProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsProtocol {
    /// Let the implementation choose.
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}
