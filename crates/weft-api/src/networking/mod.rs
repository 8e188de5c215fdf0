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
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`, …; any case.
    pub protocol: Protocol,
    /// A label for the port.
    pub name: String,
    /// The port on the endpoint, when it differs from `number`.
    pub target_port: Option<u32>,
}

/// The protocol of a port, parsed once when the resource is loaded. Istio reads the name in
/// any case (`http` is `HTTP`); a name it does not know is kept as written, for validation to
/// report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Protocol {
    /// Not declared: detected per connection (Istio's protocol sniffing).
    #[default]
    Unspecified,
    /// `HTTP`: HTTP/1.1 (or HTTP/2 prior knowledge).
    Http,
    /// `HTTPS`: TLS carrying HTTP, opaque to the proxy.
    Https,
    /// `GRPC`.
    Grpc,
    /// `GRPC-WEB`.
    GrpcWeb,
    /// `HTTP2`.
    Http2,
    /// `MONGO`.
    Mongo,
    /// `REDIS`.
    Redis,
    /// `MYSQL`.
    Mysql,
    /// `TCP`: opaque bytes.
    Tcp,
    /// `TLS`: opaque TLS, routed by SNI where at all.
    Tls,
    /// `UDP`.
    Udp,
    /// A name Istio does not accept, as written.
    Unknown(String),
}

impl Protocol {
    /// The protocols Istio accepts on a `Port`.
    pub const KNOWN: [Protocol; 11] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Grpc,
        Protocol::GrpcWeb,
        Protocol::Http2,
        Protocol::Mongo,
        Protocol::Redis,
        Protocol::Mysql,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::Udp,
    ];

    /// Reads a protocol name as Istio does: case-insensitive; empty is undeclared.
    pub fn parse(name: &str) -> Self {
        if name.is_empty() {
            return Protocol::Unspecified;
        }
        Self::KNOWN
            .into_iter()
            .find(|known| known.as_str().eq_ignore_ascii_case(name))
            .unwrap_or_else(|| Protocol::Unknown(name.to_string()))
    }

    /// The name: upper case for a known protocol, empty when undeclared, as written otherwise.
    pub fn as_str(&self) -> &str {
        match self {
            Protocol::Unspecified => "",
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Http2 => "HTTP2",
            Protocol::Mongo => "MONGO",
            Protocol::Redis => "REDIS",
            Protocol::Mysql => "MYSQL",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Udp => "UDP",
            Protocol::Unknown(name) => name,
        }
    }

    /// Whether a proxy routes the port as HTTP: every protocol but the opaque ones (TCP, TLS,
    /// HTTPS and the databases). Undeclared ones are, as Istio sniffs them.
    pub fn is_http(&self) -> bool {
        !matches!(
            self,
            Protocol::Tcp
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Mysql
                | Protocol::Redis
                | Protocol::Https
        )
    }

    /// Whether the protocol is left to detection per connection: undeclared, as Istio does
    /// for ports without a protocol prefix in their name.
    pub fn is_sniffed(&self) -> bool {
        *self == Protocol::Unspecified
    }
}

impl From<String> for Protocol {
    fn from(name: String) -> Self {
        Protocol::parse(&name)
    }
}

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

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn a_protocol_is_read_in_any_case_and_an_unknown_one_kept_as_written() {
        for known in Protocol::KNOWN {
            assert_eq!(Protocol::parse(known.as_str()), known);
            assert_eq!(Protocol::parse(&known.as_str().to_ascii_lowercase()), known);
        }
        assert_eq!(Protocol::parse("Grpc-Web"), Protocol::GrpcWeb);
        assert_eq!(Protocol::parse(""), Protocol::Unspecified);
        assert_eq!(Protocol::parse("httpz"), Protocol::Unknown("httpz".into()));
        assert_eq!(Protocol::parse(" http").as_str(), " http");
    }

    #[test]
    fn opaque_protocols_are_not_routed_as_http_and_only_undeclared_ones_are_sniffed() {
        let http: Vec<&str> = Protocol::KNOWN
            .iter()
            .filter(|p| p.is_http())
            .map(Protocol::as_str)
            .collect();
        assert_eq!(http, ["HTTP", "GRPC", "GRPC-WEB", "HTTP2", "UDP"]);
        assert!(Protocol::Unspecified.is_http() && Protocol::Unspecified.is_sniffed());
        assert!(Protocol::parse("other").is_http() && !Protocol::parse("other").is_sniffed());
        assert!(Protocol::KNOWN.iter().all(|p| !p.is_sniffed()));
    }
}
