//! Host names as Istio resolves them: a short name (no dot) belongs to the namespace of the
//! resource that writes it, `reviews` in `default` is `reviews.default.svc.cluster.local`.
//! Shared by analysis here and by the control plane's registry and translation.

use std::net::IpAddr;

/// The Kubernetes cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Expands a short host written in `namespace` to its fully qualified name.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.{CLUSTER_DOMAIN}",
            host.to_ascii_lowercase()
        )
    }
}

/// The namespace of a Kubernetes service host (`name.ns.svc.cluster.local`), if it is one.
pub fn service_namespace(fqdn: &str) -> Option<&str> {
    let mut labels = fqdn.split('.');
    let _name = labels.next()?;
    let namespace = labels.next()?;
    (labels.next() == Some("svc")).then_some(namespace)
}

/// Whether a host pattern (`*.example.com`, `*`) covers a host, ignoring case.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_short_names_in_the_resource_namespace() {
        assert_eq!(fqdn("reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(fqdn("reviews.other", "prod"), "reviews.other");
        assert_eq!(fqdn("api.example.com", "prod"), "api.example.com");
        assert_eq!(
            service_namespace("reviews.prod.svc.cluster.local"),
            Some("prod")
        );
        assert_eq!(service_namespace("api.example.com"), None);
        assert!(covers("*.example.com", "api.example.com"));
    }
}
