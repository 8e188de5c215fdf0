//! Routing and load balancing: which route a request takes (the first that matches, as in
//! Istio), which of its weighted clusters, and which endpoint of that cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::http::request::Parts;

use crate::hashing;
use crate::model::{
    Cluster, Endpoint, Forward, HashOn, LoadBalancer, PathMatch, Route, RouteMatch, WeightedCluster,
};

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
        let value = match h.name.as_str() {
            ":method" => Some(request.method.as_str().to_string()),
            ":authority" => Some(authority.to_string()),
            ":path" => request.uri.path_and_query().map(|p| p.as_str().to_string()),
            ":scheme" => Some("http".to_string()),
            name => {
                let values: Vec<&str> = request
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        };
        let value = match (value, h.missing_is_empty) {
            (None, true) => Some(String::new()),
            (value, _) => value,
        };
        h.condition.matches(value.as_deref()) != h.invert
    });
    if !headers_ok {
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
    let mut ticket = fastrand::u64(..total);
    for cluster in &forward.clusters {
        let weight = u64::from(cluster.weight);
        if ticket < weight {
            return Some(cluster);
        }
        ticket -= weight;
    }
    forward.clusters.last()
}

/// Load-balancer state that outlives configuration changes: the round-robin position and
/// the requests in flight to each endpoint, by cluster.
#[derive(Debug, Default, Clone)]
pub struct Balancers {
    clusters: Arc<Mutex<HashMap<String, Arc<ClusterState>>>>,
}

#[derive(Debug, Default)]
struct ClusterState {
    next: AtomicUsize,
    active: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// An endpoint chosen for one request; counts as in flight until dropped.
#[derive(Debug)]
pub struct Pick<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    active: Arc<AtomicUsize>,
}

impl Drop for Pick<'_> {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancers {
    fn state(&self, cluster: &str) -> Arc<ClusterState> {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    /// A healthy endpoint of `cluster` by its policy; `None` when none is healthy. A
    /// consistent-hash cluster uses `hash` (a request without one gets a random endpoint).
    pub fn pick<'a>(&self, cluster: &'a Cluster, hash: Option<u64>) -> Option<Pick<'a>> {
        let healthy: Vec<&Endpoint> = cluster.endpoints.iter().filter(|e| e.healthy).collect();
        if healthy.is_empty() {
            return None;
        }
        let hashed = match (cluster.lb, hash) {
            (LoadBalancer::RingHash, Some(key)) => hashing::ring_lookup(&cluster.hash_table, key),
            (LoadBalancer::Maglev, Some(key)) => hashing::maglev_lookup(&cluster.hash_table, key),
            _ => None,
        };
        let state = self.state(&cluster.name);
        let active = |endpoint: &Endpoint| {
            state
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(endpoint.address)
                .or_default()
                .clone()
        };
        let endpoint = match cluster.lb {
            // The hashed endpoint while it is healthy; else the next healthy one.
            LoadBalancer::RingHash | LoadBalancer::Maglev if hashed.is_some() => {
                let start = hashed.unwrap_or(0);
                let count = cluster.endpoints.len();
                (0..count)
                    .map(|i| &cluster.endpoints[(start + i) % count])
                    .find(|e| e.healthy)?
            }
            LoadBalancer::RoundRobin => {
                healthy[state.next.fetch_add(1, Ordering::Relaxed) % healthy.len()]
            }
            LoadBalancer::Random | LoadBalancer::RingHash | LoadBalancer::Maglev => {
                healthy[fastrand::usize(..healthy.len())]
            }
            LoadBalancer::LeastRequest => {
                let a = healthy[fastrand::usize(..healthy.len())];
                let b = healthy[fastrand::usize(..healthy.len())];
                if active(b).load(Ordering::Relaxed) < active(a).load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        let counter = active(endpoint);
        counter.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            endpoint,
            active: counter,
        })
    }
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
            .map(|v| hashing::hash_of(v.as_bytes())),
        HashOn::Cookie(name) => request
            .headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| hashing::hash_of(value))
            }),
        HashOn::SourceIp => client.map(hashing::hash_of),
        HashOn::QueryParameter(name) => request.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| hashing::hash_of(value))
            })
        }),
    })
}
