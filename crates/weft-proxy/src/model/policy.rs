//! Authorization policies (AuthorizationPolicy, as the RBAC filters the control plane
//! sends): the DENY and ALLOW sets of an inbound port and the conditions of their
//! policies. They are evaluated by the `authz` module.

use std::net::IpAddr;

use serde::Serialize;

use super::authn::AuthMatch;
use super::matcher::{HeaderMatch, StringMatch};

/// The RBAC of one inbound port.
#[derive(Debug, Default, Serialize)]
pub struct Rbac {
    /// Policies that deny; none when there is no DENY filter.
    pub deny: Option<Vec<Policy>>,
    /// Policies that allow; none when there is no ALLOW filter. An empty set allows nothing.
    pub allow: Option<Vec<Policy>>,
    /// Dry-run DENY policies (`istio.io/dry-run`): evaluated and logged, never enforced.
    pub dry_run_deny: Option<Vec<Policy>>,
    /// Dry-run ALLOW policies.
    pub dry_run_allow: Option<Vec<Policy>>,
}

impl Rbac {
    /// Whether it has no filter at all (and so decides nothing).
    pub fn is_empty(&self) -> bool {
        self.deny.is_none()
            && self.allow.is_none()
            && self.dry_run_deny.is_none()
            && self.dry_run_allow.is_none()
    }

    /// The names of its policies, by set: what tells two of them apart.
    pub fn names(&self) -> [Option<Vec<String>>; 4] {
        fn names(set: &Option<Vec<Policy>>) -> Option<Vec<String>> {
            set.as_ref()
                .map(|policies| policies.iter().map(|p| p.name.clone()).collect())
        }
        [
            names(&self.deny),
            names(&self.allow),
            names(&self.dry_run_deny),
            names(&self.dry_run_allow),
        ]
    }
}

/// One policy.
#[derive(Debug, Serialize)]
pub struct Policy {
    /// Its name (the AuthorizationPolicy's and rule's).
    pub name: String,
    /// What is asked; one must match.
    pub permissions: Vec<Permission>,
    /// Who asks; one must match.
    pub principals: Vec<Principal>,
}

/// A condition on the request.
#[derive(Debug, Serialize)]
pub enum Permission {
    /// Anything.
    Any,
    /// All of these.
    And(Vec<Permission>),
    /// One of these.
    Or(Vec<Permission>),
    /// Not this.
    Not(Box<Permission>),
    /// A header (`:method`, `:authority` and `:path` included).
    Header(HeaderMatch),
    /// The path, without the query.
    Path(StringMatch),
    /// The port the request arrived on.
    DestinationPort(u16),
    /// The address the request arrived at.
    DestinationIp(Cidr),
}

/// A condition on the caller.
#[derive(Debug, Serialize)]
pub enum Principal {
    /// Anyone.
    Any,
    /// All of these.
    And(Vec<Principal>),
    /// One of these.
    Or(Vec<Principal>),
    /// Not this.
    Not(Box<Principal>),
    /// An mTLS peer whose identity matches (any mTLS peer without a condition).
    Authenticated(Option<StringMatch>),
    /// The connection's source address.
    SourceIp(Cidr),
    /// The original client's address (`x-forwarded-for`, as far back as the gateway trusts
    /// the proxies in front of it; the source where it trusts none).
    RemoteIp(Cidr),
    /// The request's verified token (`requestPrincipals`, `request.auth.*`).
    RequestAuth(AuthMatch),
}

/// An address range.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cidr {
    /// The first address.
    pub address: IpAddr,
    /// Bits of prefix.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, other)) = (bits(self.address), bits(ip));
        if width != other {
            return false;
        }
        let prefix = u32::from(self.prefix.min(width));
        if prefix == 0 {
            return true;
        }
        let shift = u32::from(width) - prefix;
        (net >> shift) == (addr >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges() {
        let net = Cidr {
            address: "10.1.0.0".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            prefix: 16,
        };
        assert!(net.contains(IpAddr::from([10, 1, 200, 3])));
        assert!(!net.contains(IpAddr::from([10, 2, 0, 1])));
        let one = Cidr {
            address: IpAddr::from([127, 0, 0, 1]),
            prefix: 32,
        };
        assert!(one.contains(IpAddr::from([127, 0, 0, 1])));
        assert!(!one.contains(IpAddr::from([127, 0, 0, 2])));
    }
}
