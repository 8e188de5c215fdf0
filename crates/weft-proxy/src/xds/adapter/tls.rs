//! TLS settings in clusters and gateway listeners: mesh mTLS (certificates from SDS, the
//! peer's SPIFFE IDs to accept), and TLS origination or termination with the files a
//! DestinationRule or Gateway names — read when the resource arrives, so a file that cannot
//! be read or used rejects the resource and the last good configuration stays.

use weft_xds::envoy::envoy::config::core::v3::{DataSource, TransportSocket, transport_socket};
use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, UpstreamTlsContext,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::StringMatcher;
use weft_xds::envoy::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::proto::decode_any;
use crate::model::UpstreamTls;
use crate::tls::ServerSan;

/// The mesh TLS an upstream transport socket asks for; `None` for plaintext. Only mesh mTLS
/// (certificates from SDS) is supported so far.
pub(super) fn upstream_tls(socket: &TransportSocket) -> Result<Option<UpstreamTls>, String> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Ok(None);
    };
    if !any.type_url.ends_with("UpstreamTlsContext") {
        return Ok(None);
    }
    let context: UpstreamTlsContext = decode_any(any)?;
    let common = context.common_tls_context.unwrap_or_default();
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    if common.tls_certificate_sds_secret_configs.is_empty() {
        return originate(context.sni, common).map(Some);
    }
    // The SPIFFE IDs the peer may have: exact URI names only; any other shape rejects the
    // cluster rather than accepting any mesh peer.
    let identities = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            match combined.default_validation_context {
                Some(validation) => subject_alt_names(&validation)?
                    .into_iter()
                    .map(|name| match name {
                        ServerSan::Uri(id) => Ok(id),
                        ServerSan::Dns(name) => Err(format!(
                            "a mesh peer is named by SPIFFE ID, not by DNS name {name:?}"
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    Ok(Some(UpstreamTls::mesh(context.sni, identities)))
}

/// TLS origination (DestinationRule `SIMPLE` or `MUTUAL`) from the files the rule names,
/// read now: a file that cannot be read or used rejects the cluster, and the last good
/// configuration stays.
fn originate(
    sni: String,
    common: weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> Result<UpstreamTls, String> {
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let validation = match common.validation_context_type {
        Some(ValidationContextType::ValidationContext(validation)) => validation,
        _ => Default::default(),
    };
    let ca = match &validation.trusted_ca {
        Some(source) => data_source(source).map_err(|e| format!("caCertificates: {e}"))?,
        None => crate::tls::system_ca_bundle()
            .ok_or("no caCertificates given and no system CA bundle found")?,
    };
    let names = subject_alt_names(&validation)?;
    let client = match common.tls_certificates.first() {
        Some(certificate) => {
            let read = |source: &Option<DataSource>, what: &str| match source {
                Some(source) => data_source(source).map_err(|e| format!("{what}: {e}")),
                None => Err(format!("MUTUAL needs {what}")),
            };
            Some((
                read(&certificate.certificate_chain, "clientCertificate")?,
                read(&certificate.private_key, "privateKey")?,
            ))
        }
        None => None,
    };
    let config = crate::tls::origination_config(
        &ca,
        &names,
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )?;
    let mut settings: Vec<&[u8]> = vec![&ca];
    settings.extend(names.iter().map(|n| match n {
        ServerSan::Dns(name) | ServerSan::Uri(name) => name.as_bytes(),
    }));
    if let Some((chain, key)) = &client {
        settings.extend([chain.as_slice(), key.as_slice()]);
    }
    Ok(UpstreamTls::origination(
        sni,
        config,
        client.is_some(),
        &settings,
    ))
}

/// The names a server's certificate must carry, from a validation context: exact DNS or URI
/// names (typed, or the deprecated untyped list, where `scheme://` marks a URI). Any other
/// shape is an error, never "any name".
#[allow(
    deprecated,
    reason = "older control planes still send the untyped list"
)]
pub(super) fn subject_alt_names(
    validation: &CertificateValidationContext,
) -> Result<Vec<ServerSan>, String> {
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    let exact = |matcher: &Option<StringMatcher>| match matcher {
        Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(name)),
            ignore_case: false,
        }) => Ok(name.clone()),
        other => Err(format!(
            "a subject alternative name matcher this proxy does not support: {other:?}"
        )),
    };
    let mut names = Vec::new();
    for matcher in &validation.match_typed_subject_alt_names {
        let name = exact(&matcher.matcher)?;
        names.push(match SanType::try_from(matcher.san_type) {
            Ok(SanType::Dns) => ServerSan::Dns(name),
            Ok(SanType::Uri) => ServerSan::Uri(name),
            _ => {
                return Err(format!(
                    "subject alternative name type {} is not supported",
                    matcher.san_type
                ));
            }
        });
    }
    for matcher in &validation.match_subject_alt_names {
        let name = exact(&Some(matcher.clone()))?;
        names.push(if name.contains("://") {
            ServerSan::Uri(name)
        } else {
            ServerSan::Dns(name)
        });
    }
    Ok(names)
}

/// The bytes a data source holds: a file's contents, or inline bytes or text.
pub(super) fn data_source(source: &DataSource) -> Result<Vec<u8>, String> {
    use weft_xds::envoy::envoy::config::core::v3::data_source::Specifier;
    match &source.specifier {
        Some(Specifier::Filename(path)) => {
            std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
        }
        Some(Specifier::InlineBytes(bytes)) => Ok(bytes.clone()),
        Some(Specifier::InlineString(text)) => Ok(text.as_bytes().to_vec()),
        _ => Err("no data".into()),
    }
}
