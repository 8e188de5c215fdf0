//! DestinationRule rules: subsets, and the traffic policy at top, subset and port level.

use std::collections::HashSet;

use super::Report;
use super::rules::{
    check_duration, check_duration_or_zero, check_export_to, check_hosts, check_labels,
    check_percent_value, check_port, check_selector, is_dns_label,
};
use crate::codes;
use crate::networking::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, OutlierDetection, TrafficPolicy,
};

pub(crate) fn validate(dr: &DestinationRule, report: &mut Report<'_>) {
    if dr.host.is_empty() {
        report.at(
            &codes::REQUIRED,
            "spec.host",
            "spec.host is missing; name the service this rule applies to",
        );
    } else {
        check_hosts(std::slice::from_ref(&dr.host), "spec.host", false, report);
    }
    check_export_to(&dr.export_to, "spec.exportTo", report);
    check_selector(&dr.workload_selector, "spec.workloadSelector", report);
    if let Some(policy) = &dr.traffic_policy {
        check_policy(policy, "spec.trafficPolicy", true, report);
    }
    let mut names = HashSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            report.at(
                &codes::INVALID_SUBSET,
                &path,
                "the subset has no name; routes refer to subsets by name",
            );
        } else if !is_dns_label(&subset.name) {
            report.at(
                &codes::INVALID_SUBSET,
                &format!("{path}.name"),
                format!(
                    "subset name {:?} is not valid: lower-case letters, digits and '-', at most 63",
                    subset.name
                ),
            );
        } else if !names.insert(subset.name.as_str()) {
            report.at(
                &codes::INVALID_SUBSET,
                &format!("{path}.name"),
                format!(
                    "subset {:?} is defined twice in this rule; subset names must be unique",
                    subset.name
                ),
            );
        }
        if subset.labels.is_empty() {
            report.at(
                &codes::SUSPICIOUS,
                &path,
                format!(
                    "subset {:?} has no labels, so it selects every endpoint of the service",
                    subset.name
                ),
            );
        }
        check_labels(&subset.labels, &format!("{path}.labels"), report);
        if let Some(policy) = &subset.traffic_policy {
            check_policy(policy, &format!("{path}.trafficPolicy"), true, report);
        }
    }
}

fn check_policy(policy: &TrafficPolicy, path: &str, top_level: bool, report: &mut Report<'_>) {
    if let Some(lb) = &policy.load_balancer {
        check_load_balancer(lb, &format!("{path}.loadBalancer"), report);
    }
    if let Some(pool) = &policy.connection_pool {
        check_connection_pool(pool, &format!("{path}.connectionPool"), report);
    }
    if let Some(outlier) = &policy.outlier_detection {
        check_outlier_detection(outlier, &format!("{path}.outlierDetection"), report);
    }
    if let Some(tls) = &policy.tls {
        check_tls(tls, &format!("{path}.tls"), report);
    }
    if !top_level {
        return;
    }
    let mut ports = HashSet::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}]");
        match &port_policy.port {
            None => report.at(
                &codes::REQUIRED,
                &at,
                "a port-level setting needs port.number",
            ),
            Some(port) => {
                check_port(port.number, &format!("{at}.port.number"), report);
                if !ports.insert(port.number) {
                    report.at(
                        &codes::CONFLICTING_FIELDS,
                        &format!("{at}.port"),
                        format!(
                            "port {} has two port-level settings; merge them",
                            port.number
                        ),
                    );
                }
            }
        }
        let as_policy = TrafficPolicy {
            load_balancer: port_policy.load_balancer.clone(),
            connection_pool: port_policy.connection_pool.clone(),
            outlier_detection: port_policy.outlier_detection.clone(),
            tls: port_policy.tls.clone(),
            ..TrafficPolicy::default()
        };
        check_policy(&as_policy, &at, false, report);
    }
    if let Some(tunnel) = &policy.tunnel {
        let at = format!("{path}.tunnel");
        if tunnel.target_host.is_empty() {
            report.at(&codes::REQUIRED, &at, "tunnel.targetHost is required");
        }
        check_port(tunnel.target_port, &format!("{at}.targetPort"), report);
        if let Some(protocol) = &tunnel.protocol
            && !matches!(protocol.as_str(), "CONNECT" | "POST")
        {
            report.at(
                &codes::INVALID_ENUM,
                &format!("{at}.protocol"),
                format!("tunnel protocol {protocol:?} must be CONNECT or POST"),
            );
        }
    }
    if let Some(proxy_protocol) = &policy.proxy_protocol
        && let Some(version) = &proxy_protocol.version
        && !matches!(version.as_str(), "V1" | "V2")
    {
        report.at(
            &codes::INVALID_ENUM,
            &format!("{path}.proxyProtocol.version"),
            format!("PROXY protocol version {version:?} must be V1 or V2"),
        );
    }
    if let Some(budget) = &policy.retry_budget
        && let Some(percent) = budget.percent
    {
        check_percent_value(percent, &format!("{path}.retryBudget.percent"), report);
    }
}

fn check_load_balancer(lb: &LoadBalancerSettings, path: &str, report: &mut Report<'_>) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "loadBalancer takes simple or consistentHash, not both",
        );
    }
    if let Some(hash) = &lb.consistent_hash {
        let at = format!("{path}.consistentHash");
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip == Some(true),
            hash.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|&&k| k)
        .count();
        if keys == 0 {
            report.at(&codes::REQUIRED, &at, "consistentHash needs one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName");
        } else if keys > 1 {
            report.at(&codes::CONFLICTING_FIELDS, &at, "consistentHash takes exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName");
        }
        if hash.ring_hash.is_some() && hash.maglev.is_some() {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "consistentHash takes ringHash or maglev, not both",
            );
        }
        if let Some(cookie) = &hash.http_cookie {
            if cookie.name.is_empty() {
                report.at(
                    &codes::REQUIRED,
                    &format!("{at}.httpCookie"),
                    "httpCookie.name is required",
                );
            }
            check_duration_or_zero(&cookie.ttl, &format!("{at}.httpCookie.ttl"), report);
        }
        if let Some(size) = hash.maglev.as_ref().and_then(|m| m.table_size)
            && !is_prime(size)
        {
            report.at(
                &codes::OUT_OF_RANGE,
                &format!("{at}.maglev.tableSize"),
                format!("maglev tableSize {size} must be a prime number (65537 is the default)"),
            );
        }
    }
    if let Some(locality) = &lb.locality_lb_setting {
        let at = format!("{path}.localityLbSetting");
        let modes = [
            !locality.distribute.is_empty(),
            !locality.failover.is_empty(),
            !locality.failover_priority.is_empty(),
        ];
        if modes[0] && (modes[1] || modes[2]) {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &at,
                "localityLbSetting takes distribute or failover, not both",
            );
        }
        for (i, distribute) in locality.distribute.iter().enumerate() {
            let total: u64 = distribute.to.values().map(|&w| u64::from(w)).sum();
            if total != 100 {
                report.at(
                    &codes::OUT_OF_RANGE,
                    &format!("{at}.distribute[{i}].to"),
                    format!("locality weights total {total}; they must total 100"),
                );
            }
        }
    }
    if let Some(warmup) = &lb.warmup {
        let at = format!("{path}.warmup");
        check_duration(&warmup.duration, &format!("{at}.duration"), report);
        if let Some(minimum) = warmup.minimum_percent {
            check_percent_value(minimum, &format!("{at}.minimumPercent"), report);
        }
        if let Some(aggression) = warmup.aggression
            && aggression < 1.0
        {
            report.at(
                &codes::OUT_OF_RANGE,
                &format!("{at}.aggression"),
                format!("aggression {aggression} must be at least 1.0"),
            );
        }
    }
    check_duration(
        &lb.warmup_duration_secs,
        &format!("{path}.warmupDurationSecs"),
        report,
    );
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn check_connection_pool(pool: &ConnectionPoolSettings, path: &str, report: &mut Report<'_>) {
    let mut non_negative = |value: Option<i64>, field: &str| {
        if let Some(v) = value
            && v < 0
        {
            report.at(
                &codes::OUT_OF_RANGE,
                &format!("{path}.{field}"),
                format!("{field} is {v}; it must be 0 or more"),
            );
        }
    };
    if let Some(tcp) = &pool.tcp {
        non_negative(tcp.max_connections, "tcp.maxConnections");
    }
    if let Some(http) = &pool.http {
        non_negative(
            http.http1_max_pending_requests,
            "http.http1MaxPendingRequests",
        );
        non_negative(http.http2_max_requests, "http.http2MaxRequests");
        non_negative(
            http.max_requests_per_connection,
            "http.maxRequestsPerConnection",
        );
        non_negative(http.max_retries, "http.maxRetries");
        non_negative(http.max_concurrent_streams, "http.maxConcurrentStreams");
    }
    if let Some(tcp) = &pool.tcp {
        check_duration(
            &tcp.connect_timeout,
            &format!("{path}.tcp.connectTimeout"),
            report,
        );
        check_duration(
            &tcp.max_connection_duration,
            &format!("{path}.tcp.maxConnectionDuration"),
            report,
        );
        check_duration_or_zero(
            &tcp.idle_timeout,
            &format!("{path}.tcp.idleTimeout"),
            report,
        );
        if let Some(keepalive) = &tcp.tcp_keepalive {
            check_duration(
                &keepalive.time,
                &format!("{path}.tcp.tcpKeepalive.time"),
                report,
            );
            check_duration(
                &keepalive.interval,
                &format!("{path}.tcp.tcpKeepalive.interval"),
                report,
            );
        }
    }
    if let Some(http) = &pool.http {
        check_duration_or_zero(
            &http.idle_timeout,
            &format!("{path}.http.idleTimeout"),
            report,
        );
        if let Some(keepalive) = &http.http2_keep_alive {
            check_duration(
                &keepalive.interval,
                &format!("{path}.http.http2KeepAlive.interval"),
                report,
            );
            check_duration(
                &keepalive.timeout,
                &format!("{path}.http.http2KeepAlive.timeout"),
                report,
            );
        }
    }
}

fn check_outlier_detection(outlier: &OutlierDetection, path: &str, report: &mut Report<'_>) {
    if let Some(errors) = outlier.consecutive_errors
        && errors < 0
    {
        report.at(
            &codes::OUT_OF_RANGE,
            &format!("{path}.consecutiveErrors"),
            "consecutiveErrors must be 0 or more",
        );
    }
    check_duration(&outlier.interval, &format!("{path}.interval"), report);
    check_duration(
        &outlier.base_ejection_time,
        &format!("{path}.baseEjectionTime"),
        report,
    );
    if let Some(max) = outlier.max_ejection_percent {
        check_percent_value(max as f64, &format!("{path}.maxEjectionPercent"), report);
    } else {
        report.at(
            &codes::SUSPICIOUS,
            path,
            "maxEjectionPercent defaults to 10, so a service with fewer than 10 endpoints never ejects any; set it (100 for small services)",
        );
    }
    if let Some(min) = outlier.min_health_percent {
        check_percent_value(min as f64, &format!("{path}.minHealthPercent"), report);
    }
    if let (Some(gateway), Some(any)) = (
        outlier.consecutive_gateway_errors,
        outlier.consecutive_5xx_errors,
    ) && any > 0
        && gateway >= any
    {
        report.at(
            &codes::SUSPICIOUS,
            &format!("{path}.consecutiveGatewayErrors"),
            format!("consecutiveGatewayErrors ({gateway}) is not below consecutive5xxErrors ({any}), so it never triggers first and has no effect"),
        );
    }
}

fn check_tls(tls: &ClientTlsSettings, path: &str, report: &mut Report<'_>) {
    let files = tls.client_certificate.is_some()
        || tls.private_key.is_some()
        || tls.ca_certificates.is_some();
    match tls.mode {
        Some(ClientTlsMode::IstioMutual) if files || tls.credential_name.is_some() => report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "ISTIO_MUTUAL uses the mesh's certificates; remove clientCertificate, privateKey, caCertificates and credentialName",
        ),
        Some(ClientTlsMode::Mutual)
            if tls.credential_name.is_none() && (tls.client_certificate.is_none() || tls.private_key.is_none()) =>
        {
            report.at(
                &codes::REQUIRED,
                path,
                "MUTUAL needs clientCertificate and privateKey (or credentialName)",
            )
        }
        _ => {}
    }
    if tls.credential_name.is_some() && files {
        report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "credentialName replaces the certificate files; use one or the other",
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn primes() {
        assert!(super::is_prime(65537));
        assert!(!super::is_prime(65536));
        assert!(!super::is_prime(1));
    }
}
