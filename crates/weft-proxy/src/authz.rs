//! Authorization (AuthorizationPolicy, as the RBAC filters the control plane sends),
//! evaluated: a DENY set checked first, then an ALLOW set — if there is one, a request must
//! match one of its policies. A policy matches when one of its permissions (what is asked)
//! and one of its principals (who asks) match. Dry-run policies are evaluated the same way,
//! and their verdict only reported ([`Rbac::dry_run`]). The policies themselves are
//! [`crate::model::policy`].

use std::net::IpAddr;

use crate::http::headers::header_value;
use crate::model::policy::{Permission, Policy, Principal, Rbac};

/// What a decision looks at.
#[derive(Debug)]
pub struct Request<'a> {
    /// The mTLS peer's SPIFFE ID.
    pub peer: Option<&'a str>,
    /// The connection's source address.
    pub source: IpAddr,
    /// The original client's address, from `x-forwarded-for`: at a gateway, as many entries
    /// back as it trusts proxies in front of it; at a sidecar, its last entry (as Envoy
    /// without `use_remote_address`); the source without one.
    pub remote: IpAddr,
    /// The address and port the connection arrived at.
    pub destination: (IpAddr, u16),
    /// Method, path and headers, for HTTP.
    pub http: Option<&'a hyper::http::request::Parts>,
}

/// Why a request or connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// A DENY policy matched.
    #[error("denied by {0}")]
    DeniedBy(String),
    /// There are ALLOW policies and none matched.
    #[error("no ALLOW policy matches")]
    NotAllowed,
    /// The port has no policies for this protocol: it does not carry it.
    #[error("the port does not carry this protocol")]
    NotCarried,
    /// The port has no configuration yet (or its listener was rejected), so which policies
    /// apply is unknown.
    #[error("the port has no authorization configuration")]
    Unconfigured,
}

impl Rbac {
    /// Whether the port's policies let `request` through: the DENY set first, then the
    /// ALLOW set.
    pub fn check(&self, request: &Request<'_>) -> Result<(), Denial> {
        if let Some(policy) = self.deny.iter().flatten().find(|p| p.matches(request)) {
            return Err(Denial::DeniedBy(policy.name.clone()));
        }
        match &self.allow {
            Some(policies) if !policies.iter().any(|p| p.matches(request)) => {
                Err(Denial::NotAllowed)
            }
            _ => Ok(()),
        }
    }
}

/// What the dry-run policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    /// A dry-run DENY policy matches.
    WouldDeny(String),
    /// There are dry-run ALLOW policies and none matches.
    WouldNotAllow,
    /// The dry-run policies let the request through (the name of the ALLOW policy that
    /// matched, if any).
    WouldAllow(Option<String>),
}

impl Rbac {
    /// The enforced decision on `request`, with what the dry-run policies would have decided
    /// logged beside it (`dry-run authorization`): the one entry point of the listeners.
    pub fn decide(&self, request: &Request<'_>) -> Result<(), Denial> {
        let decision = self.check(request);
        if let Some(dry_run) = self.dry_run(request) {
            let enforced = match &decision {
                Ok(()) => "allowed".to_string(),
                Err(denial) => denial.to_string(),
            };
            let path = request.http.map(|parts| parts.uri.path());
            tracing::info!(
                ?dry_run,
                %enforced,
                ?path,
                peer = ?request.peer,
                remote = %request.remote,
                "dry-run authorization"
            );
        }
        decision
    }

    /// What the port's dry-run policies say about `request`; `None` without any.
    pub fn dry_run(&self, request: &Request<'_>) -> Option<DryRun> {
        if self.dry_run_deny.is_none() && self.dry_run_allow.is_none() {
            return None;
        }
        if let Some(policy) = self
            .dry_run_deny
            .iter()
            .flatten()
            .find(|p| p.matches(request))
        {
            return Some(DryRun::WouldDeny(policy.name.clone()));
        }
        Some(match &self.dry_run_allow {
            Some(policies) => match policies.iter().find(|p| p.matches(request)) {
                Some(policy) => DryRun::WouldAllow(Some(policy.name.clone())),
                None => DryRun::WouldNotAllow,
            },
            None => DryRun::WouldAllow(None),
        })
    }
}

impl Policy {
    fn matches(&self, request: &Request<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(request))
            && self.principals.iter().any(|p| p.matches(request))
    }
}

impl Permission {
    fn matches(&self, request: &Request<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(request)),
            Self::Or(any) => any.iter().any(|p| p.matches(request)),
            Self::Not(inner) => !inner.matches(request),
            Self::Header(header) => request.http.is_some_and(|parts| {
                let authority = parts
                    .headers
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| parts.uri.authority().map(|a| a.to_string()));
                let value = match (header.name.as_str(), authority) {
                    (":authority", None) => None,
                    (name, authority) => {
                        header_value(parts, name, authority.as_deref().unwrap_or_default())
                    }
                };
                header.condition.matches(value.as_deref()) != header.invert
            }),
            Self::Path(path) => request
                .http
                .is_some_and(|parts| path.matches(Some(parts.uri.path()))),
            Self::DestinationPort(port) => request.destination.1 == *port,
            Self::DestinationIp(cidr) => cidr.contains(request.destination.0),
        }
    }
}

impl Principal {
    fn matches(&self, request: &Request<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(request)),
            Self::Or(any) => any.iter().any(|p| p.matches(request)),
            Self::Not(inner) => !inner.matches(request),
            Self::Authenticated(None) => request.peer.is_some(),
            Self::Authenticated(Some(name)) => name.matches(request.peer),
            Self::SourceIp(cidr) => cidr.contains(request.source),
            Self::RemoteIp(cidr) => cidr.contains(request.remote),
            Self::RequestAuth(condition) => {
                condition.matches(request.http.and_then(crate::authn::identity))
            }
        }
    }
}

/// The address `hops` entries before the last of `x-forwarded-for`, as Envoy picks the
/// original client with `xff_num_trusted_hops`; `None` when the header has too few entries
/// or that one is not an address.
pub fn forwarded_client(headers: &hyper::HeaderMap, hops: u32) -> Option<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let at = entries.len().checked_sub(1 + usize::try_from(hops).ok()?)?;
    entries[at].parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use super::*;
    use crate::model::policy::Cidr;
    use crate::model::{HeaderMatch, StringMatch};

    fn policy(name: &str, permission: Permission, principal: Principal) -> Policy {
        Policy {
            name: name.to_string(),
            permissions: vec![permission],
            principals: vec![principal],
        }
    }

    fn get(path: &str) -> hyper::http::request::Parts {
        hyper::Request::get(path)
            .header("host", "echo.test:80")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn request<'a>(peer: Option<&'a str>, http: &'a hyper::http::request::Parts) -> Request<'a> {
        Request {
            peer,
            source: IpAddr::from([10, 0, 0, 9]),
            remote: IpAddr::from([10, 0, 0, 9]),
            destination: (IpAddr::from([10, 0, 0, 1]), 8080),
            http: Some(http),
        }
    }

    const CLIENT: &str = "spiffe://cluster.local/ns/test/sa/client";

    #[test]
    fn deny_is_checked_before_allow() {
        let admin = Permission::Path(StringMatch::Prefix("/admin".into()));
        let rbac = Rbac {
            deny: Some(vec![policy("no-admin", admin, Principal::Any)]),
            allow: Some(vec![policy("all", Permission::Any, Principal::Any)]),
            ..Rbac::default()
        };
        let (admin, other) = (get("/admin/x"), get("/x"));
        assert_eq!(
            rbac.check(&request(Some(CLIENT), &admin)),
            Err(Denial::DeniedBy("no-admin".into()))
        );
        assert_eq!(rbac.check(&request(Some(CLIENT), &other)), Ok(()));
    }

    #[test]
    fn an_empty_allow_set_allows_nothing_and_no_set_allows_all() {
        let parts = get("/");
        let nothing = Rbac {
            deny: None,
            allow: Some(Vec::new()),
            ..Rbac::default()
        };
        assert_eq!(
            nothing.check(&request(Some(CLIENT), &parts)),
            Err(Denial::NotAllowed)
        );
        assert_eq!(Rbac::default().check(&request(None, &parts)), Ok(()));
    }

    #[test]
    fn principals_and_permissions_both_must_match() {
        let clients_get = policy(
            "clients-get",
            Permission::Header(HeaderMatch {
                name: ":method".into(),
                condition: StringMatch::Exact("GET".into()),
                invert: false,
                missing_is_empty: false,
            }),
            Principal::Authenticated(Some(StringMatch::Exact(CLIENT.into()))),
        );
        let rbac = Rbac {
            deny: None,
            allow: Some(vec![clients_get]),
            ..Rbac::default()
        };
        let parts = get("/");
        assert_eq!(rbac.check(&request(Some(CLIENT), &parts)), Ok(()));
        assert_eq!(
            rbac.check(&request(None, &parts)),
            Err(Denial::NotAllowed),
            "plaintext has no principal"
        );
        let post = hyper::Request::post("/").body(()).unwrap().into_parts().0;
        assert_eq!(
            rbac.check(&request(Some(CLIENT), &post)),
            Err(Denial::NotAllowed)
        );
        let from_net = Rbac {
            deny: None,
            allow: Some(vec![policy(
                "net",
                Permission::Not(Box::new(Permission::DestinationPort(9090))),
                Principal::SourceIp(Cidr {
                    address: IpAddr::from([10, 0, 0, 0]),
                    prefix: 24,
                }),
            )]),
            ..Rbac::default()
        };
        assert_eq!(from_net.check(&request(None, &parts)), Ok(()));
    }
}
