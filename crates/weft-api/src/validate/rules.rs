//! Rules shared by several kinds: names, hosts, labels, ports, durations, percentages,
//! regular expressions and addresses, each as Istio checks them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Report;
use crate::Duration;
use crate::codes;
use crate::meta::{WorkloadLabels, WorkloadSelector};
use crate::networking::Percent;
use crate::networking::virtual_service::StringMatch;

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A host as Istio accepts in `hosts`: a DNS name, optionally with a `*.` prefix, or `*`.
/// Upper case is allowed (DNS ignores case).
pub(crate) fn is_wildcard_host(host: &str) -> bool {
    if host == "*" {
        return true;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks a list of hosts, reporting each bad one. `*` alone is allowed only when
/// `allow_star` is set.
pub(crate) fn check_hosts(hosts: &[String], path: &str, allow_star: bool, report: &mut Report<'_>) {
    for (i, host) in hosts.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if host == "*" && !allow_star {
            report.at(&codes::INVALID_HOST, &at, "`*` alone is not allowed here; name the hosts, or use a prefix wildcard such as *.example.com");
        } else if !is_wildcard_host(host) && host.parse::<IpAddr>().is_err() {
            report.at(
                &codes::INVALID_HOST,
                &at,
                format!("{host:?} is not a valid host name; use a DNS name such as reviews or reviews.prod.svc.cluster.local"),
            );
        }
    }
}

/// A destination host: a DNS name without wildcards.
pub(crate) fn check_destination_host(host: &str, path: &str, report: &mut Report<'_>) {
    if host.is_empty() {
        report.at(
            &codes::REQUIRED,
            path,
            "destination host is missing; name the service to send traffic to",
        );
    } else if host.contains('*') || !is_wildcard_host(host) {
        report.at(
            &codes::INVALID_HOST,
            path,
            format!("destination host {host:?} is not a valid service name (no wildcards, only letters, digits, '-' and '.')"),
        );
    }
}

/// Checks a label map (`labels`, `matchLabels`, `sourceLabels`).
pub(crate) fn check_labels(labels: &BTreeMap<String, String>, path: &str, report: &mut Report<'_>) {
    for (key, value) in labels {
        let at = format!("{path}.{key}");
        if !is_label_key(key) {
            report.at(
                &codes::INVALID_LABEL,
                &at,
                format!("label key {key:?} is not valid: an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'"),
            );
        }
        if !value.is_empty() && !is_label_name(value) {
            report.at(
                &codes::INVALID_LABEL,
                &at,
                format!("label value {value:?} is not valid: up to 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"),
            );
        }
    }
}

/// Checks a `selector` / `workloadSelector` written with `matchLabels`.
pub(crate) fn check_selector(
    selector: &Option<WorkloadSelector>,
    path: &str,
    report: &mut Report<'_>,
) {
    if let Some(selector) = selector {
        check_labels(
            &selector.match_labels,
            &format!("{path}.matchLabels"),
            report,
        );
    }
}

/// Checks a ServiceEntry's or Sidecar's `workloadSelector`, written with `labels`.
pub(crate) fn check_workload_labels(
    selector: &Option<WorkloadLabels>,
    path: &str,
    report: &mut Report<'_>,
) {
    if let Some(selector) = selector {
        check_labels(&selector.labels, &format!("{path}.labels"), report);
    }
}

fn is_label_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// A port number: 1–65535.
pub(crate) fn check_port(port: u32, path: &str, report: &mut Report<'_>) {
    if !(1..=65535).contains(&port) {
        report.at(
            &codes::INVALID_PORT,
            path,
            format!("port {port} is not between 1 and 65535"),
        );
    }
}

/// A duration Istio requires to be at least 1ms and whole milliseconds.
pub(crate) fn check_duration(duration: &Option<Duration>, path: &str, report: &mut Report<'_>) {
    let Some(duration) = duration else { return };
    let value = duration.get();
    if value < std::time::Duration::from_millis(1) {
        report.at(
            &codes::INVALID_DURATION,
            path,
            format!("duration {duration} must be at least 1ms"),
        );
    } else if value.subsec_nanos() % 1_000_000 != 0 {
        report.at(&codes::INVALID_DURATION, path, format!("duration {duration} is finer than a millisecond; Istio supports whole milliseconds only"));
    }
}

/// A duration where zero means "off" but sub-millisecond values are still refused.
pub(crate) fn check_duration_or_zero(
    duration: &Option<Duration>,
    path: &str,
    report: &mut Report<'_>,
) {
    if duration.as_ref().is_some_and(|d| !d.get().is_zero()) {
        check_duration(duration, path, report);
    }
}

/// A `Percent` in 0–100.
pub(crate) fn check_percent(percent: &Option<Percent>, path: &str, report: &mut Report<'_>) {
    if let Some(percent) = percent {
        check_percent_value(percent.value, &format!("{path}.value"), report);
    }
}

/// A percentage as a bare number in 0–100.
pub(crate) fn check_percent_value(value: f64, path: &str, report: &mut Report<'_>) {
    if !(0.0..=100.0).contains(&value) {
        report.at(
            &codes::INVALID_PERCENT,
            path,
            format!("percentage {value} is not between 0 and 100"),
        );
    }
}

/// An RE2 regular expression. The `regex` crate's syntax is RE2's (no backreferences, no
/// look-around), which is what Envoy compiles.
pub(crate) fn check_regex(pattern: &str, path: &str, report: &mut Report<'_>) {
    if let Err(err) = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        let why = err.to_string();
        let why = why.lines().last().unwrap_or("invalid").trim().to_string();
        report.at(
            &codes::INVALID_REGEX,
            path,
            format!("regular expression {pattern:?} is not valid RE2: {why}"),
        );
    }
}

/// A `StringMatch`: exactly one operator, or none where `empty_ok` (a presence match).
pub(crate) fn check_string_match(
    m: &StringMatch,
    path: &str,
    empty_ok: bool,
    report: &mut Report<'_>,
) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|&&s| s)
        .count();
    if set > 1 {
        report.at(
            &codes::INVALID_STRING_MATCH,
            path,
            "a string match takes exactly one of exact, prefix or regex",
        );
    } else if set == 0 && !empty_ok {
        report.at(
            &codes::INVALID_STRING_MATCH,
            path,
            "the string match is empty; give one of exact, prefix or regex",
        );
    }
    if let Some(regex) = &m.regex {
        check_regex(regex, &format!("{path}.regex"), report);
    }
}

/// An HTTP header name: a non-empty token, lower case where Istio matches on it.
pub(crate) fn check_header_name(
    name: &str,
    path: &str,
    require_lowercase: bool,
    report: &mut Report<'_>,
) {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        report.at(
            &codes::INVALID_HEADER,
            path,
            format!("{name:?} is not a valid HTTP header name"),
        );
    } else if require_lowercase && name.bytes().any(|b| b.is_ascii_uppercase()) {
        report.at(
            &codes::INVALID_HEADER,
            path,
            format!(
                "header name {name:?} must be lower case in a match (write {:?})",
                name.to_ascii_lowercase()
            ),
        );
    }
}

/// An IP address or CIDR block.
pub(crate) fn is_ip_or_cidr(text: &str) -> bool {
    match text.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(bits)) => bits <= 32,
            (Ok(IpAddr::V6(_)), Ok(bits)) => bits <= 128,
            _ => false,
        },
        None => text.parse::<IpAddr>().is_ok(),
    }
}

/// Checks a list of IPs or CIDRs.
pub(crate) fn check_addresses(addresses: &[String], path: &str, report: &mut Report<'_>) {
    for (i, address) in addresses.iter().enumerate() {
        if !is_ip_or_cidr(address) {
            report.at(
                &codes::INVALID_ADDRESS,
                &format!("{path}[{i}]"),
                format!("{address:?} is not an IP address or CIDR block (such as 10.0.0.0/8)"),
            );
        }
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names.
pub(crate) fn check_export_to(export_to: &[String], path: &str, report: &mut Report<'_>) {
    for (i, target) in export_to.iter().enumerate() {
        if !matches!(target.as_str(), "." | "*" | "~") && !is_dns_label(target) {
            report.at(
                &codes::INVALID_NAME,
                &format!("{path}[{i}]"),
                format!("exportTo entry {target:?} must be \".\", \"*\" or a namespace name"),
            );
        }
    }
}
