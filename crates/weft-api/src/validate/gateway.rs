//! Gateway rules.

use super::Report;
use super::rules::{check_labels, check_port, is_wildcard_host};
use super::service_entry::check_protocol;
use crate::codes;
use crate::networking::gateway::Gateway;
use crate::networking::{Protocol, ServerTlsMode, ServerTlsSettings};

pub(crate) fn validate(gateway: &Gateway, report: &mut Report<'_>) {
    if gateway.servers.is_empty() {
        report.at(
            &codes::REQUIRED,
            "spec.servers",
            "a Gateway needs at least one server",
        );
    }
    check_labels(&gateway.selector, "spec.selector", report);
    for (i, server) in gateway.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        match &server.port {
            None => report.at(
                &codes::REQUIRED,
                &path,
                "a server needs a port (number, protocol, name)",
            ),
            Some(port) => {
                check_port(port.number, &format!("{path}.port.number"), report);
                if port.protocol == Protocol::Unspecified {
                    report.at(
                        &codes::REQUIRED,
                        &format!("{path}.port"),
                        "port.protocol is required (HTTP, HTTPS, GRPC, HTTP2, TCP, TLS, …)",
                    );
                }
                check_protocol(&port.protocol, &format!("{path}.port.protocol"), report);
                if port.protocol == Protocol::Https && server.tls.is_none() {
                    report.at(
                        &codes::REQUIRED,
                        &path,
                        "an HTTPS server needs tls settings",
                    );
                }
            }
        }
        if server.hosts.is_empty() {
            report.at(
                &codes::REQUIRED,
                &format!("{path}.hosts"),
                "a server needs at least one host (\"*\" for all)",
            );
        }
        for (k, host) in server.hosts.iter().enumerate() {
            let name = host.split_once('/').map_or(host.as_str(), |(_, h)| h);
            if !is_wildcard_host(name) {
                report.at(
                    &codes::INVALID_HOST,
                    &format!("{path}.hosts[{k}]"),
                    format!("{host:?} is not a host or namespace/host"),
                );
            }
        }
        if let Some(tls) = &server.tls {
            check_server_tls(tls, &format!("{path}.tls"), report);
        }
    }
}

/// Checks TLS a listener terminates (Gateway and Sidecar ingress).
pub(crate) fn check_server_tls(tls: &ServerTlsSettings, path: &str, report: &mut Report<'_>) {
    let has_files = !tls.server_certificate.is_empty() && !tls.private_key.is_empty();
    let has_secret = !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty()
        || !tls.tls_certificates.is_empty();
    match tls.mode {
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
            if !has_files && !has_secret =>
        {
            report.at(
                &codes::REQUIRED,
                path,
                "SIMPLE and MUTUAL TLS need serverCertificate and privateKey, or credentialName",
            );
        }
        _ => {}
    }
    if matches!(tls.mode, Some(ServerTlsMode::Mutual))
        && tls.ca_certificates.is_empty()
        && !has_secret
        && tls.ca_cert_credential_name.is_empty()
    {
        report.at(
            &codes::REQUIRED,
            path,
            "MUTUAL TLS needs caCertificates to verify clients",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min > max
    {
        report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
}
