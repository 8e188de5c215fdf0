//! Routing: which route of a virtual host a request takes (the first that matches, as in
//! Istio), which of its weighted clusters, and the hash that consistent-hash load balancing
//! uses for it.

use std::sync::atomic::Ordering;

use hyper::http::request::Parts;

use crate::http::headers::header_value;
use crate::model::{Forward, HashOn, PathMatch, Route, RouteMatch, WeightedCluster};
use crate::upstream::hash;

/// The first route of `routes` that matches the request.
pub fn select<'a>(routes: &'a [Route], request: &Parts, authority: &str) -> Option<&'a Route> {
    routes
        .iter()
        .find(|r| matches(&r.matcher, request, authority))
}

fn matches(m: &RouteMatch, request: &Parts, authority: &str) -> bool {
    let path = request.uri.path();
    let path_ok = match &m.path {
        PathMatch::Prefix(prefix) if m.ignore_case => path
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
        PathMatch::Exact(exact) if m.ignore_case => path.eq_ignore_ascii_case(exact),
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Regex(regex) => regex.is_match(path),
    };
    if !path_ok {
        return false;
    }
    let headers_ok = m.headers.iter().all(|h| {
        let value = header_value(request, &h.name, authority);
        let value = match (value, h.missing_is_empty) {
            (None, true) => Some(String::new()),
            (value, _) => value,
        };
        h.condition.matches(value.as_deref()) != h.invert
    });
    if !headers_ok {
        return false;
    }
    let identity = crate::authn::identity(request);
    if !m.claims.iter().all(|claim| claim.matches(identity)) {
        return false;
    }
    m.query.iter().all(|q| {
        let value = request.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == q.name).then_some(value)
            })
        });
        q.condition.matches(value)
    })
}

/// One of a route's clusters, chosen by weight.
pub fn pick_cluster(forward: &Forward) -> Option<&WeightedCluster> {
    let total: u64 = forward.clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return forward.clusters.first();
    }
    // The n-th request's ticket is the fractional part of n × the golden ratio (a Weyl
    // sequence): consecutive requests land far apart, like random draws, but any run of
    // requests splits within a few requests of the weights, where random draws stray by
    // three points over 2,000 requests now and then.
    let n = forward.picks.fetch_add(1, Ordering::Relaxed);
    let fraction = u128::from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32);
    let mut ticket = u64::try_from((fraction * u128::from(total)) >> 32).unwrap_or(0);
    for cluster in &forward.clusters {
        let weight = u64::from(cluster.weight);
        if ticket < weight {
            return Some(cluster);
        }
        ticket -= weight;
    }
    forward.clusters.last()
}

/// The hash of a request by the route's hash policy: the first policy that finds a value.
pub fn request_hash(
    policy: &[HashOn],
    request: &Parts,
    client: Option<std::net::IpAddr>,
) -> Option<u64> {
    policy.iter().find_map(|on| match on {
        HashOn::Header(name) => request
            .headers
            .get(name.as_str())
            .map(|v| hash::hash_of(v.as_bytes())),
        HashOn::Cookie(name) => request
            .headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| hash::hash_of(value))
            }),
        HashOn::SourceIp => client.map(hash::hash_of),
        HashOn::QueryParameter(name) => request.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| hash::hash_of(value))
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    use crate::model::HeaderChanges;

    fn weighted(name: &str, weight: u32) -> WeightedCluster {
        WeightedCluster {
            name: name.to_string(),
            weight,
            request_headers: HeaderChanges::default(),
            response_headers: HeaderChanges::default(),
        }
    }

    #[test]
    fn weights_split_evenly_over_any_run_of_requests() {
        let forward = Forward {
            clusters: vec![weighted("v1", 95), weighted("v3", 5)],
            timeout: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policy: Vec::new(),
            retry: None,
            picks: AtomicU64::new(0),
        };
        for run in [100u64, 1000, 2000] {
            let v3 = (0..run)
                .filter(|_| pick_cluster(&forward).is_some_and(|c| c.name == "v3"))
                .count() as u64;
            assert!(v3.abs_diff(run / 20) <= 2, "{v3} of {run} went to v3");
        }
    }
}
