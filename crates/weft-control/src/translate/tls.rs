//! The mesh's transport sockets. Towards upstreams, as a DestinationRule's `tls` (or its
//! absence) asks:
//!
//! * **ISTIO_MUTUAL** — the mesh's own mTLS: the proxy's certificate is the SDS secret
//!   `default` and the trust bundle the SDS secret `ROOTCA` (Istio's names); ALPN `istio`;
//!   SNI `outbound_.<port>_.<subset>_.<host>`; the server must present one of the SPIFFE IDs
//!   of the service's endpoints.
//! * **unset** — auto-mTLS: mesh mTLS to endpoints labelled `tlsMode: istio` (the mesh's
//!   workloads), plaintext to the others.
//! * **SIMPLE / MUTUAL** — TLS origination with the files the rule names.
//! * **DISABLE** — plaintext.
//!
//!
//! Towards the workload, the inbound side terminates mesh mTLS with the same two secrets
//! ([`mesh_tls_server`]). The control plane serves `ROOTCA` (see [`root_secret`]); `default`
//! holds the proxy's own key, which never leaves it, so the proxy (or its agent) serves that
//! one itself, as Istio's agent does.

use std::collections::BTreeSet;

use weft_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use weft_api::networking::service_entry::Location;
use weft_xds::envoy::envoy::config::cluster::v3::{Cluster, cluster::TransportSocketMatch};
use weft_xds::envoy::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use weft_xds::envoy::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    certificate_validation_context::SystemRootCerts,
    common_tls_context::CombinedCertificateValidationContext,
    common_tls_context::ValidationContextType, secret, subject_alt_name_matcher::SanType,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use weft_xds::envoy::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use weft_xds::server::Resource;
use weft_xds::types::pack;

use super::envoy::{ads, file, tls_socket};
use super::names::{ROOT_SECRET, WORKLOAD_SECRET};
use crate::registry::Service;

/// The `ROOTCA` secret: the root certificate workloads trust.
pub(crate) fn root_secret(root_pem: &str) -> Resource {
    let secret = Secret {
        name: ROOT_SECRET.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(root_pem)),
                ..CertificateValidationContext::default()
            },
        )),
    };
    Resource::new(ROOT_SECRET, pack(&secret))
}

/// The metadata that marks an endpoint as a mesh workload (`tlsMode: istio`).
pub(crate) fn mesh_endpoint_match() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".into())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// Sets `cluster`'s transport socket(s) for the effective `tls` setting.
pub(crate) fn apply(
    cluster: &mut Cluster,
    tls: Option<&ClientTlsSettings>,
    service: &Service,
    port: u32,
    subset: &str,
    trust_domain: &str,
) {
    let sni = || format!("outbound_.{port}_.{subset}_.{}", service.host);
    let identities = || {
        service
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "spiffe://{trust_domain}/ns/{}/sa/{}",
                    e.namespace, e.service_account
                )
            })
            .collect::<BTreeSet<_>>()
    };
    match tls.and_then(|t| t.mode) {
        None if service.location == Location::MeshInternal => {
            cluster.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: "tlsMode-istio".to_string(),
                    r#match: Some(mesh_endpoint_match()),
                    transport_socket: Some(mesh_tls(sni(), identities())),
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".to_string(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_buffer()),
                },
            ];
        }
        Some(ClientTlsMode::IstioMutual) => {
            cluster.transport_socket = Some(mesh_tls(sni(), identities()))
        }
        Some(mode @ (ClientTlsMode::Simple | ClientTlsMode::Mutual)) => {
            if let Some(settings) = tls {
                cluster.transport_socket = Some(originate(
                    settings,
                    mode == ClientTlsMode::Mutual,
                    &service.host,
                ));
            }
        }
        None | Some(ClientTlsMode::Disable) => {}
    }
}

/// An SDS secret, over the ADS stream.
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn mesh_tls(sni: String, identities: BTreeSet<String>) -> TransportSocket {
    let context = UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            alpn_protocols: vec!["istio".to_string()],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: identities
                            .into_iter()
                            .map(|id| san(SanType::Uri, &id))
                            .collect(),
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                    ..CombinedCertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    tls_socket(&context)
}

/// mTLS with the workload's own certificate, requiring a client certificate from the mesh.
pub(crate) fn mesh_tls_server() -> TransportSocket {
    let context = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(
                sds(ROOT_SECRET),
            )),
            ..CommonTlsContext::default()
        }),
        ..DownstreamTlsContext::default()
    };
    tls_socket(&context)
}

/// TLS origination (`SIMPLE`, `MUTUAL`). The server is always verified: against the rule's
/// `caCertificates`, else the proxy's system roots (as Istio sends `caCertificates:
/// system`); a `subjectAltNames` entry with a scheme (`spiffe://…`) is a URI SAN, the others
/// DNS names.
fn originate(settings: &ClientTlsSettings, mutual: bool, host: &str) -> TransportSocket {
    let validation = CertificateValidationContext {
        trusted_ca: settings.ca_certificates.as_deref().map(file),
        system_root_certs: settings
            .ca_certificates
            .is_none()
            .then(SystemRootCerts::default),
        match_typed_subject_alt_names: settings
            .subject_alt_names
            .iter()
            .map(|name| match name.contains("://") {
                true => san(SanType::Uri, name),
                false => san(SanType::Dns, name),
            })
            .collect(),
        ..CertificateValidationContext::default()
    };
    let certificates = match (mutual, &settings.client_certificate, &settings.private_key) {
        (true, Some(chain), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..TlsCertificate::default()
        }],
        _ => Vec::new(),
    };
    let context = UpstreamTlsContext {
        sni: settings.sni.clone().unwrap_or_else(|| host.to_string()),
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: certificates,
            validation_context_type: Some(ValidationContextType::ValidationContext(validation)),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    tls_socket(&context)
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
            &RawBuffer::default(),
        ))),
    }
}

fn san(kind: SanType, value: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: kind as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_string())),
            ..StringMatcher::default()
        }),
        ..SubjectAltNameMatcher::default()
    }
}

fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..DataSource::default()
    }
}
