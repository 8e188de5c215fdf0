//! TLS settings in clusters and gateway listeners: mesh mTLS (certificates from SDS, the
//! peer's SPIFFE IDs to accept), and TLS origination or termination with the files a
//! DestinationRule or Gateway names — read when the resource arrives, so a file that cannot
//! be read or used rejects the resource and the last good configuration stays.

use weft_xds::envoy::envoy::config::core::v3::{DataSource, TransportSocket, transport_socket};
use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use weft_xds::envoy::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::proto::decode_any;
use crate::model::UpstreamTls;

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
    let identities = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => combined
            .default_validation_context
            .map(|v| {
                v.match_typed_subject_alt_names
                    .into_iter()
                    .filter_map(|m| match m.matcher.and_then(|m| m.match_pattern) {
                        Some(MatchPattern::Exact(id)) => Some(id),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
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
    let names: Vec<String> = validation
        .match_typed_subject_alt_names
        .into_iter()
        .filter_map(|m| match m.matcher.and_then(|m| m.match_pattern) {
            Some(MatchPattern::Exact(name)) => Some(name),
            _ => None,
        })
        .collect();
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
    settings.extend(names.iter().map(|n| n.as_bytes()));
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
