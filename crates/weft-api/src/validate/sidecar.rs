//! Sidecar rules.

use super::Report;
use super::gateway::check_server_tls;
use super::rules::{check_port, check_workload_labels, is_dns_label, is_wildcard_host};
use super::service_entry::check_protocol;
use crate::codes;
use crate::networking::sidecar::{OutboundMode, Sidecar};

pub(crate) fn validate(sidecar: &Sidecar, report: &mut Report<'_>) {
    check_workload_labels(&sidecar.workload_selector, "spec.workloadSelector", report);
    if sidecar.egress.is_empty() {
        report.at(&codes::REQUIRED, "spec.egress", "a Sidecar needs at least one egress listener (hosts: [\"./*\"] keeps the namespace reachable)");
    }
    for (i, egress) in sidecar.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        if egress.hosts.is_empty() {
            report.at(
                &codes::REQUIRED,
                &format!("{path}.hosts"),
                "an egress listener needs hosts, written namespace/dnsName",
            );
        }
        for (k, host) in egress.hosts.iter().enumerate() {
            let valid = match host.split_once('/') {
                Some((namespace, name)) => {
                    (matches!(namespace, "*" | "." | "~") || is_dns_label(namespace))
                        && (name == "*" || is_wildcard_host(name))
                }
                None => false,
            };
            if !valid {
                report.at(
                    &codes::INVALID_HOST,
                    &format!("{path}.hosts[{k}]"),
                    format!(
                        "{host:?} must be written namespace/dnsName, such as ./* or istio-system/*"
                    ),
                );
            }
        }
        if let Some(port) = &egress.port {
            check_port(port.number, &format!("{path}.port.number"), report);
            check_protocol(&port.protocol, &format!("{path}.port.protocol"), report);
        }
    }
    for (i, ingress) in sidecar.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        match &ingress.port {
            None => report.at(&codes::REQUIRED, &path, "an ingress listener needs a port"),
            Some(port) => {
                check_port(port.number, &format!("{path}.port.number"), report);
                check_protocol(&port.protocol, &format!("{path}.port.protocol"), report);
            }
        }
        if let Some(endpoint) = &ingress.default_endpoint
            && !endpoint.starts_with("unix://")
            && endpoint
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            report.at(
                &codes::INVALID_ADDRESS,
                &format!("{path}.defaultEndpoint"),
                format!("{endpoint:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT or unix:///path"),
            );
        }
        if let Some(tls) = &ingress.tls {
            check_server_tls(tls, &format!("{path}.tls"), report);
        }
    }
    if let Some(policy) = &sidecar.outbound_traffic_policy
        && policy.egress_proxy.is_some()
        && policy.mode == Some(OutboundMode::RegistryOnly)
    {
        report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.outboundTrafficPolicy.egressProxy",
            "egressProxy only applies in ALLOW_ANY mode",
        );
    }
}
