//! Fields Weft reads but does not act on yet. Each gets an Info message at the field, so a
//! setting is never silently ignored. The list shrinks as features land; it is the one place
//! to edit when one does.

use crate::codes;
use crate::message::Message;
use crate::networking::destination_rule::TrafficPolicy;
use crate::resource::{Resource, Spec};
use crate::security::authorization_policy::Action;
use crate::validate::Report;

pub(crate) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    for resource in resources {
        let mut found: Vec<(String, &str)> = Vec::new();
        let mut custom = false;
        match &resource.spec {
            Spec::VirtualService(vs) => {
                if !vs.tls.is_empty() {
                    found.push(("spec.tls".to_string(), "TLS (SNI) routes"));
                }
                if !vs.tcp.is_empty() {
                    found.push(("spec.tcp".to_string(), "TCP routes"));
                }
                for (i, rule) in vs.http.iter().enumerate() {
                    let path = format!("spec.http[{i}]");
                    if rule.delegate.is_some() {
                        found.push((format!("{path}.delegate"), "VirtualService delegation"));
                    }
                    let bytes_body = rule
                        .direct_response
                        .as_ref()
                        .and_then(|d| d.body.as_ref())
                        .is_some_and(|b| b.bytes.is_some());
                    let not_yet: [(bool, &str, &str); 2] = [
                        (
                            bytes_body,
                            "directResponse.body.bytes",
                            "binary direct-response bodies",
                        ),
                        (rule.cors_policy.is_some(), "corsPolicy", "CORS policies"),
                    ];
                    for (present, field, feature) in not_yet {
                        if present {
                            found.push((format!("{path}.{field}"), feature));
                        }
                    }
                    if let Some(fault) = &rule.fault {
                        if fault
                            .delay
                            .as_ref()
                            .is_some_and(|d| d.exponential_delay.is_some())
                        {
                            found.push((
                                format!("{path}.fault.delay.exponentialDelay"),
                                "exponential fault delays",
                            ));
                        }
                        if fault
                            .abort
                            .as_ref()
                            .is_some_and(|a| a.http2_error.is_some())
                        {
                            found.push((
                                format!("{path}.fault.abort.http2Error"),
                                "HTTP/2 error aborts",
                            ));
                        }
                    }
                }
            }
            Spec::DestinationRule(dr) => {
                if dr.workload_selector.is_some() {
                    found.push((
                        "spec.workloadSelector".to_string(),
                        "DestinationRules scoped to client workloads",
                    ));
                }
                if let Some(policy) = &dr.traffic_policy {
                    policy_fields(policy, "spec.trafficPolicy", &mut found);
                }
                for (i, subset) in dr.subsets.iter().enumerate() {
                    if let Some(policy) = &subset.traffic_policy {
                        policy_fields(
                            policy,
                            &format!("spec.subsets[{i}].trafficPolicy"),
                            &mut found,
                        );
                    }
                }
            }
            Spec::AuthorizationPolicy(ap) if ap.action == Some(Action::Custom) => {
                custom = true;
            }
            Spec::Gateway(gateway) => {
                for (i, server) in gateway.servers.iter().enumerate() {
                    if let Some((field, feature)) = server.unserved() {
                        found.push((format!("spec.servers[{i}].{field}"), feature));
                    }
                }
            }
            Spec::Sidecar(sidecar) => {
                let capture = sidecar.ingress.iter().any(|l| l.capture_mode.is_some())
                    || sidecar.egress.iter().any(|l| l.capture_mode.is_some());
                if capture {
                    found.push(("spec".to_string(), "per-listener captureMode"));
                }
                if !sidecar.ingress.is_empty() {
                    found.push(("spec.ingress".to_string(), "Sidecar ingress listeners"));
                }
                if sidecar.outbound_traffic_policy.is_some() {
                    found.push((
                        "spec.outboundTrafficPolicy".to_string(),
                        "outboundTrafficPolicy (traffic to unknown hosts always passes through)",
                    ));
                }
            }
            _ => {}
        }
        let mut report = Report::new(resource, out);
        if custom {
            report.at(
                &codes::NOT_IMPLEMENTED,
                "spec.action",
                "Weft cannot ask an external authorizer yet (CUSTOM): requests this policy's rules match are denied, as Istio denies them when the provider is missing",
            );
        }
        for (path, feature) in found {
            report.at(
                &codes::NOT_IMPLEMENTED,
                &path,
                format!("Weft does not implement {feature} yet; this setting has no effect"),
            );
        }
    }
}

fn policy_fields(policy: &TrafficPolicy, path: &str, found: &mut Vec<(String, &str)>) {
    if policy.tunnel.is_some() {
        found.push((format!("{path}.tunnel"), "tunnelling through HTTP CONNECT"));
    }
    if policy.proxy_protocol.is_some() {
        found.push((
            format!("{path}.proxyProtocol"),
            "the upstream PROXY protocol",
        ));
    }
    if let Some(lb) = &policy.load_balancer {
        if lb.locality_lb_setting.is_some() {
            found.push((
                format!("{path}.loadBalancer.localityLbSetting"),
                "locality-aware load balancing",
            ));
        }
        if lb.warmup.is_some() || lb.warmup_duration_secs.is_some() {
            found.push((format!("{path}.loadBalancer"), "slow start (warmup)"));
        }
    }
    if let Some(tls) = &policy.tls {
        if tls.ca_crl.is_some() {
            found.push((format!("{path}.tls.caCrl"), "certificate revocation lists"));
        }
        if tls.credential_name.is_some() {
            found.push((
                format!("{path}.tls.credentialName"),
                "TLS credentials from Kubernetes secrets",
            ));
        }
    }
}
