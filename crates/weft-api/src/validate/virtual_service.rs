//! VirtualService rules, as Istio's validation applies them.

use super::Report;
use super::rules::{
    check_addresses, check_destination_host, check_duration, check_export_to, check_header_name,
    check_hosts, check_labels, check_percent, check_percent_value, check_port, check_regex,
    check_string_match, is_dns_label,
};
use crate::codes;
use crate::networking::virtual_service::{
    Destination, HeaderOperations, Headers, HttpFaultInjection, HttpRetry, HttpRoute,
    RouteDestination, VirtualService,
};

/// Retry conditions Envoy understands in `x-envoy-retry-on` and `x-envoy-retry-grpc-on`.
pub(crate) const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names `fault.abort.grpcStatus` accepts, in the order of their codes.
pub const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(crate) fn validate(vs: &VirtualService, report: &mut Report<'_>) {
    if vs.hosts.is_empty() {
        report.at(
            &codes::REQUIRED,
            "spec.hosts",
            "spec.hosts is empty; a VirtualService needs at least one host to route (delegate VirtualServices are not supported yet)",
        );
    }
    let bound_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    check_hosts(&vs.hosts, "spec.hosts", !bound_to_mesh, report);
    check_export_to(&vs.export_to, "spec.exportTo", report);
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        report.at(
            &codes::REQUIRED,
            "spec",
            "the VirtualService has no http, tcp or tls routes; give at least one",
        );
    }
    for (i, route) in vs.http.iter().enumerate() {
        validate_http_route(route, &format!("spec.http[{i}]"), report);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        if route.matches.is_empty() {
            report.at(
                &codes::REQUIRED,
                &path,
                "a tls route needs a match with sniHosts",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            let at = format!("{path}.match[{j}]");
            if m.sni_hosts.is_empty() {
                report.at(
                    &codes::REQUIRED,
                    &format!("{at}.sniHosts"),
                    "sniHosts is required in a tls match",
                );
            }
            check_hosts(&m.sni_hosts, &format!("{at}.sniHosts"), true, report);
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                if !vs
                    .hosts
                    .iter()
                    .any(|h| crate::hosts::covers(h, sni) || crate::hosts::covers(sni, h))
                {
                    report.at(
                        &codes::INVALID_HOST,
                        &format!("{at}.sniHosts[{k}]"),
                        format!(
                            "SNI host {sni:?} is not within the VirtualService's hosts {:?}",
                            vs.hosts
                        ),
                    );
                }
            }
            check_l4_match(
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &at,
                report,
            );
        }
        check_l4_destinations(&route.route, &path, report);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            let at = format!("{path}.match[{j}]");
            check_l4_match(
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &at,
                report,
            );
        }
        check_l4_destinations(&route.route, &path, report);
    }
}

/// The connection-level conditions TLS and TCP matches share.
fn check_l4_match(
    subnets: &[String],
    port: Option<u32>,
    source_labels: &std::collections::BTreeMap<String, String>,
    path: &str,
    report: &mut Report<'_>,
) {
    check_addresses(subnets, &format!("{path}.destinationSubnets"), report);
    if let Some(port) = port {
        check_port(port, &format!("{path}.port"), report);
    }
    check_labels(source_labels, &format!("{path}.sourceLabels"), report);
}

fn validate_http_route(route: &HttpRoute, path: &str, report: &mut Report<'_>) {
    let has_route = !route.route.is_empty();
    let actions = [
        has_route,
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ]
    .iter()
    .filter(|&&a| a)
    .count();
    if actions == 0 {
        report.at(&codes::REQUIRED, path, "the rule has no route, redirect, directResponse or delegate; say where matching requests go");
    } else if actions > 1 {
        report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "route, redirect, directResponse and delegate exclude each other; keep one",
        );
    }
    if route.rewrite.is_some() && route.redirect.is_some() {
        report.at(
            &codes::CONFLICTING_FIELDS,
            &format!("{path}.rewrite"),
            "rewrite cannot be combined with redirect",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        let at = format!("{path}.match[{j}]");
        for (field, value) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(value) = value {
                check_string_match(value, &format!("{at}.{field}"), false, report);
            }
        }
        for (field, headers) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, value) in headers {
                let header_path = format!("{at}.{field}.{name}");
                if !name.starts_with("@request.auth.claims") {
                    check_header_name(name, &header_path, true, report);
                }
                check_string_match(value, &header_path, true, report);
            }
        }
        for (name, value) in &m.query_params {
            check_string_match(value, &format!("{at}.queryParams.{name}"), true, report);
        }
        if let Some(port) = m.port {
            check_port(port, &format!("{at}.port"), report);
        }
        check_labels(&m.source_labels, &format!("{at}.sourceLabels"), report);
    }
    check_http_destinations(route, path, report);
    if let Some(redirect) = &route.redirect {
        let at = format!("{path}.redirect");
        if redirect.uri.is_some() && redirect.prefix_rewrite.is_some() {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "redirect takes uri or prefixRewrite, not both",
            );
        }
        if redirect.port.is_some() && redirect.derive_port.is_some() {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "redirect takes port or derivePort, not both",
            );
        }
        if redirect.uri.is_none()
            && redirect.prefix_rewrite.is_none()
            && redirect.authority.is_none()
            && redirect.scheme.is_none()
            && redirect.port.is_none()
            && redirect.derive_port.is_none()
        {
            report.at(&codes::REQUIRED, &at, "a redirect must change at least one of uri, prefixRewrite, authority, scheme or port");
        }
        if let Some(port) = redirect.port {
            check_port(port, &format!("{at}.port"), report);
        }
        if let Some(code) = redirect.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            report.at(
                &codes::INVALID_STATUS,
                &format!("{at}.redirectCode"),
                format!("redirect code {code} is not a redirect; use 301, 302, 303, 307 or 308"),
            );
        }
    }
    if let Some(direct) = &route.direct_response {
        let at = format!("{path}.directResponse");
        if !(200..=599).contains(&direct.status) {
            report.at(
                &codes::INVALID_STATUS,
                &format!("{at}.status"),
                format!(
                    "directResponse status {} must be between 200 and 599",
                    direct.status
                ),
            );
        }
        if let Some(body) = &direct.body
            && body.string.is_some()
            && body.bytes.is_some()
        {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &format!("{at}.body"),
                "body takes string or bytes, not both",
            );
        }
    }
    if let Some(rewrite) = &route.rewrite {
        let at = format!("{path}.rewrite");
        if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "rewrite takes uri or uriRegexRewrite, not both",
            );
        }
        if let Some(regex) = &rewrite.uri_regex_rewrite {
            if regex.pattern.is_empty() {
                report.at(
                    &codes::REQUIRED,
                    &format!("{at}.uriRegexRewrite"),
                    "uriRegexRewrite.match is required",
                );
            } else {
                check_regex(
                    &regex.pattern,
                    &format!("{at}.uriRegexRewrite.match"),
                    report,
                );
            }
        }
    }
    check_duration(&route.timeout, &format!("{path}.timeout"), report);
    if let Some(retries) = &route.retries {
        check_retries(retries, &format!("{path}.retries"), report);
    }
    if let Some(fault) = &route.fault {
        check_fault(fault, &format!("{path}.fault"), report);
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        report.at(
            &codes::CONFLICTING_FIELDS,
            &format!("{path}.mirrors"),
            "use mirror or mirrors, not both",
        );
    }
    if let Some(mirror) = &route.mirror {
        check_destination(mirror, &format!("{path}.mirror"), report);
    }
    check_percent(
        &route.mirror_percentage,
        &format!("{path}.mirrorPercentage"),
        report,
    );
    if let Some(percent) = route.mirror_percent {
        check_percent_value(f64::from(percent), &format!("{path}.mirrorPercent"), report);
    }
    for (k, mirror) in route.mirrors.iter().enumerate() {
        let at = format!("{path}.mirrors[{k}]");
        check_destination(&mirror.destination, &format!("{at}.destination"), report);
        check_percent(&mirror.percentage, &format!("{at}.percentage"), report);
    }
    if let Some(cors) = &route.cors_policy {
        let at = format!("{path}.corsPolicy");
        for (k, origin) in cors.allow_origins.iter().enumerate() {
            check_string_match(origin, &format!("{at}.allowOrigins[{k}]"), false, report);
        }
        for (k, method) in cors.allow_methods.iter().enumerate() {
            if !HTTP_METHODS.contains(&method.as_str()) && method != "*" {
                report.at(
                    &codes::INVALID_ENUM,
                    &format!("{at}.allowMethods[{k}]"),
                    format!("{method:?} is not an HTTP method (GET, POST, PUT, …, upper case)"),
                );
            }
        }
        for (field, names) in [
            ("allowHeaders", &cors.allow_headers),
            ("exposeHeaders", &cors.expose_headers),
        ] {
            for (k, name) in names.iter().enumerate() {
                if name != "*" {
                    check_header_name(name, &format!("{at}.{field}[{k}]"), false, report);
                }
            }
        }
        check_duration(&cors.max_age, &format!("{at}.maxAge"), report);
    }
    check_headers(&route.headers, &format!("{path}.headers"), report);
}

fn check_http_destinations(route: &HttpRoute, path: &str, report: &mut Report<'_>) {
    let weights: Vec<Option<i64>> = route.route.iter().map(|d| d.weight).collect();
    for (k, destination) in route.route.iter().enumerate() {
        let at = format!("{path}.route[{k}]");
        check_destination(
            &destination.destination,
            &format!("{at}.destination"),
            report,
        );
        check_headers(&destination.headers, &format!("{at}.headers"), report);
    }
    check_weights(&weights, &format!("{path}.route"), report);
}

fn check_l4_destinations(route: &[RouteDestination], path: &str, report: &mut Report<'_>) {
    if route.is_empty() {
        report.at(
            &codes::REQUIRED,
            path,
            "the rule has no route; say where matching connections go",
        );
    }
    for (k, destination) in route.iter().enumerate() {
        check_destination(
            &destination.destination,
            &format!("{path}.route[{k}].destination"),
            report,
        );
    }
    let weights: Vec<Option<i64>> = route.iter().map(|d| d.weight).collect();
    check_weights(&weights, &format!("{path}.route"), report);
}

/// Istio ≥ 1.15: weights are relative. Negative is an error, several destinations totalling
/// zero is an error, a total other than 100 is legal but worth a warning.
fn check_weights(weights: &[Option<i64>], path: &str, report: &mut Report<'_>) {
    let mut negative = false;
    for (k, weight) in weights.iter().enumerate() {
        if let Some(w) = weight
            && *w < 0
        {
            negative = true;
            report.at(
                &codes::NEGATIVE_WEIGHT,
                &format!("{path}[{k}].weight"),
                format!("weight {w} is negative; weights must be 0 or more"),
            );
        }
    }
    if negative {
        return;
    }
    let total: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
    let any_set = weights.iter().any(Option::is_some);
    if weights.len() > 1 && total == 0 {
        report.at(
            &codes::ZERO_TOTAL_WEIGHT,
            path,
            format!("the {} destinations have weights totalling 0, so none can receive traffic; give them weights", weights.len()),
        );
    } else if any_set && total != 100 {
        let shares: Vec<String> = weights
            .iter()
            .map(|w| {
                format!(
                    "{:.1}%",
                    100.0 * w.unwrap_or(0) as f64 / total.max(1) as f64
                )
            })
            .collect();
        let text = if weights.len() == 1 {
            format!(
                "a single destination gets all traffic whatever its weight ({total}); set 100 or drop the weight"
            )
        } else {
            format!(
                "weights total {total}, not 100; they are relative, so the destinations get {} of traffic",
                shares.join(" / ")
            )
        };
        report.at(&codes::WEIGHTS_NOT_100, path, text);
    }
}

fn check_destination(destination: &Destination, path: &str, report: &mut Report<'_>) {
    check_destination_host(&destination.host, &format!("{path}.host"), report);
    if let Some(subset) = &destination.subset
        && !is_dns_label(subset)
    {
        report.at(
            &codes::INVALID_SUBSET,
            &format!("{path}.subset"),
            format!("subset name {subset:?} is not valid: lower-case letters, digits and '-'"),
        );
    }
    if let Some(port) = &destination.port {
        check_port(port.number, &format!("{path}.port.number"), report);
    }
}

fn check_headers(headers: &Option<Headers>, path: &str, report: &mut Report<'_>) {
    let Some(headers) = headers else { return };
    for (direction, operations) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        if let Some(operations) = operations {
            check_header_operations(operations, &format!("{path}.{direction}"), report);
        }
    }
}

fn check_header_operations(operations: &HeaderOperations, path: &str, report: &mut Report<'_>) {
    for (field, names) in [("set", &operations.set), ("add", &operations.add)] {
        for name in names.keys() {
            // `:authority` and `host` are allowed: they become an authority rewrite.
            if name != ":authority" {
                check_header_name(name, &format!("{path}.{field}.{name}"), false, report);
            }
        }
    }
    for (k, name) in operations.remove.iter().enumerate() {
        check_header_name(name, &format!("{path}.remove[{k}]"), false, report);
    }
}

fn check_retries(retries: &HttpRetry, path: &str, report: &mut Report<'_>) {
    if retries.attempts < 0 {
        report.at(
            &codes::INVALID_RETRIES,
            &format!("{path}.attempts"),
            format!(
                "attempts {} is negative; use 0 to disable retries",
                retries.attempts
            ),
        );
    }
    if retries.attempts == 0 && (retries.per_try_timeout.is_some() || retries.retry_on.is_some()) {
        report.at(
            &codes::INVALID_RETRIES,
            &format!("{path}.attempts"),
            "attempts is 0 (retries off) but perTryTimeout or retryOn is set; set attempts, or remove the other fields",
        );
    }
    check_duration(
        &retries.per_try_timeout,
        &format!("{path}.perTryTimeout"),
        report,
    );
    check_duration(&retries.backoff, &format!("{path}.backoff"), report);
    if let Some(retry_on) = &retries.retry_on {
        for condition in retry_on.split(',').map(str::trim) {
            let is_status = condition
                .parse::<u16>()
                .is_ok_and(|s| (100..=599).contains(&s));
            if !is_status && !RETRY_ON.contains(&condition) {
                report.at(
                    &codes::INVALID_RETRIES,
                    &format!("{path}.retryOn"),
                    format!(
                        "{condition:?} is not a retry condition; use HTTP status codes or {}",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
    }
}

fn check_fault(fault: &HttpFaultInjection, path: &str, report: &mut Report<'_>) {
    if let Some(delay) = &fault.delay {
        let at = format!("{path}.delay");
        if delay.fixed_delay.is_none() && delay.exponential_delay.is_none() {
            report.at(&codes::REQUIRED, &at, "a delay fault needs fixedDelay");
        }
        check_duration(&delay.fixed_delay, &format!("{at}.fixedDelay"), report);
        check_percent(&delay.percentage, &format!("{at}.percentage"), report);
        if let Some(percent) = delay.percent {
            check_percent_value(percent as f64, &format!("{at}.percent"), report);
        }
    }
    if let Some(abort) = &fault.abort {
        let at = format!("{path}.abort");
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ]
        .iter()
        .filter(|&&k| k)
        .count();
        if kinds == 0 {
            report.at(
                &codes::REQUIRED,
                &at,
                "an abort fault needs httpStatus (or grpcStatus)",
            );
        } else if kinds > 1 {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "an abort takes one of httpStatus, grpcStatus or http2Error",
            );
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            report.at(
                &codes::INVALID_STATUS,
                &format!("{at}.httpStatus"),
                format!("abort status {status} must be between 200 and 599"),
            );
        }
        if let Some(status) = &abort.grpc_status
            && !GRPC_STATUS.contains(&status.as_str())
        {
            report.at(
                &codes::INVALID_ENUM,
                &format!("{at}.grpcStatus"),
                format!("{status:?} is not a gRPC status name (UNAVAILABLE, INTERNAL, …)"),
            );
        }
        check_percent(&abort.percentage, &format!("{at}.percentage"), report);
    }
}
