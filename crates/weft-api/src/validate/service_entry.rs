//! ServiceEntry and WorkloadEntry rules.

use std::collections::HashSet;
use std::net::IpAddr;

use super::Report;
use super::rules::{
    check_addresses, check_export_to, check_hosts, check_labels, check_port, check_workload_labels,
    is_dns_subdomain,
};
use crate::codes;
use crate::networking::Protocol;
use crate::networking::service_entry::{Resolution, ServiceEntry};
use crate::networking::workload_entry::WorkloadEntry;

pub(crate) fn validate(se: &ServiceEntry, report: &mut Report<'_>) {
    if se.hosts.is_empty() {
        report.at(
            &codes::REQUIRED,
            "spec.hosts",
            "spec.hosts is empty; a ServiceEntry needs at least one host",
        );
    }
    check_hosts(&se.hosts, "spec.hosts", false, report);
    check_addresses(&se.addresses, "spec.addresses", report);
    check_export_to(&se.export_to, "spec.exportTo", report);
    check_workload_labels(&se.workload_selector, "spec.workloadSelector", report);
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        check_port(port.number, &format!("{at}.number"), report);
        if !numbers.insert(port.number) {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &format!("{at}.number"),
                format!("port {} is listed twice", port.number),
            );
        }
        if !port.name.is_empty() && !names.insert(port.name.as_str()) {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &format!("{at}.name"),
                format!("port name {:?} is used twice", port.name),
            );
        }
        check_protocol(&port.protocol, &format!("{at}.protocol"), report);
        if let Some(target) = port.target_port {
            check_port(target, &format!("{at}.targetPort"), report);
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.workloadSelector",
            "a ServiceEntry takes endpoints or workloadSelector, not both",
        );
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    match resolution {
        Resolution::None if !se.endpoints.is_empty() => report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.endpoints",
            "resolution NONE forwards to the original destination; endpoints are not used (set resolution: STATIC or DNS)",
        ),
        Resolution::Static if se.endpoints.is_empty() && se.workload_selector.is_none() => report.at(
            &codes::REQUIRED,
            "spec.resolution",
            "resolution STATIC needs endpoints (or a workloadSelector)",
        ),
        Resolution::Dns | Resolution::DnsRoundRobin if se.endpoints.is_empty() => {
            for (i, host) in se.hosts.iter().enumerate() {
                if host.starts_with('*') {
                    report.at(
                        &codes::INVALID_HOST,
                        &format!("spec.hosts[{i}]"),
                        format!("wildcard host {host:?} cannot be resolved by DNS; list endpoints or use resolution NONE or DYNAMIC_DNS"),
                    );
                }
            }
        }
        _ => {}
    }
    let port_names: HashSet<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    for (i, endpoint) in se.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        validate_workload_entry(endpoint, &at, Some(resolution), report);
        for name in endpoint.ports.keys() {
            if !port_names.contains(name.as_str()) {
                report.at(
                    &codes::INVALID_PORT,
                    &format!("{at}.ports.{name}"),
                    format!("endpoint port {name:?} does not name a port of this ServiceEntry"),
                );
            }
        }
    }
}

/// Reports a protocol name Istio does not accept (the loader read it case-insensitively).
pub(crate) fn check_protocol(protocol: &Protocol, path: &str, report: &mut Report<'_>) {
    if let Protocol::Unknown(name) = protocol {
        let known: Vec<&str> = Protocol::KNOWN.iter().map(Protocol::as_str).collect();
        report.at(
            &codes::INVALID_ENUM,
            path,
            format!(
                "{name:?} is not a protocol; use one of {}",
                known.join(", ")
            ),
        );
    }
}

/// Checks a WorkloadEntry, standalone (`path` = `spec`) or inline in a ServiceEntry.
pub(crate) fn validate_workload_entry(
    entry: &WorkloadEntry,
    path: &str,
    resolution: Option<Resolution>,
    report: &mut Report<'_>,
) {
    if entry.address.is_empty() {
        if entry.network.is_empty() {
            report.at(
                &codes::REQUIRED,
                path,
                "address is required (an IP, a DNS name or unix:///path)",
            );
        }
    } else if !entry.address.starts_with("unix://") {
        let is_ip = entry.address.parse::<IpAddr>().is_ok();
        if resolution == Some(Resolution::Static) && !is_ip {
            report.at(
                &codes::INVALID_ADDRESS,
                &format!("{path}.address"),
                format!(
                    "{:?} is not an IP address; resolution STATIC needs IPs (use DNS for names)",
                    entry.address
                ),
            );
        } else if !is_ip && !is_dns_subdomain(&entry.address.to_ascii_lowercase()) {
            report.at(
                &codes::INVALID_ADDRESS,
                &format!("{path}.address"),
                format!(
                    "{:?} is neither an IP address nor a DNS name",
                    entry.address
                ),
            );
        }
    }
    for (name, &port) in &entry.ports {
        check_port(port, &format!("{path}.ports.{name}"), report);
    }
    check_labels(&entry.labels, &format!("{path}.labels"), report);
    if !entry.service_account.is_empty() && !is_dns_subdomain(&entry.service_account) {
        report.at(
            &codes::INVALID_NAME,
            &format!("{path}.serviceAccount"),
            format!(
                "service account {:?} is not a valid Kubernetes name",
                entry.service_account
            ),
        );
    }
}
