//! Load balancing: which endpoint of a cluster takes a request (round robin, least
//! request, random, ring hash, Maglev), with the cluster's circuit breakers (requests and
//! retries in flight) and outlier detection (endpoints that keep failing are ejected for a
//! while).

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::hash;
use crate::model::{Cluster, Endpoint, LoadBalancer};

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
    /// Requests in flight to the cluster, for its circuit breaker.
    requests: Arc<AtomicUsize>,
    /// Retries in flight, for its circuit breaker.
    retries: Arc<AtomicUsize>,
    /// Outlier detection, by endpoint.
    health: Mutex<HashMap<SocketAddr, EndpointHealth>>,
}

/// What outlier detection knows of an endpoint.
#[derive(Debug, Default, Clone, Copy)]
struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl EndpointHealth {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }
}

/// A place under a circuit breaker, given back when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response that is not a gateway error.
    ServerError,
    /// 502, 503, 504, or no response at all (connect failure, reset).
    GatewayError,
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
    /// The balancer of one cluster, looked up once for all that a request does with it.
    pub fn of<'a>(&self, cluster: &'a Cluster) -> ClusterBalancer<'a> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let state = match clusters.get(cluster.name.as_str()) {
            Some(state) => state.clone(),
            None => clusters.entry(cluster.name.clone()).or_default().clone(),
        };
        ClusterBalancer { cluster, state }
    }

    /// A healthy endpoint of `cluster`: [`ClusterBalancer::pick`].
    pub fn pick<'a>(&self, cluster: &'a Cluster, hash: Option<u64>) -> Option<Pick<'a>> {
        self.of(cluster).pick(hash)
    }
}

/// One cluster's load-balancer state, with the cluster it balances.
#[derive(Debug)]
pub struct ClusterBalancer<'a> {
    cluster: &'a Cluster,
    state: Arc<ClusterState>,
}

impl<'a> ClusterBalancer<'a> {
    /// The name of the cluster it balances.
    pub fn cluster_name(&self) -> &str {
        &self.cluster.name
    }

    /// A place for one request under the cluster's circuit breaker; `None` when it is full
    /// (Envoy's overflow, `503 UO`).
    pub fn admit(&self) -> Option<Admitted> {
        Self::take(&self.state.requests, self.cluster.max_requests)
    }

    /// A place for one retry under the cluster's `maxRetries`; `None` when none is free.
    pub fn admit_retry(&self) -> Option<Admitted> {
        Self::take(&self.state.retries, self.cluster.max_retries)
    }

    fn take(counter: &Arc<AtomicUsize>, limit: u32) -> Option<Admitted> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let taken = counter.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(counter.clone());
        (taken < limit).then_some(admitted)
    }

    /// Records how an attempt to `endpoint` ended; an endpoint that fails too often in a row
    /// is ejected for the cluster's base ejection time times the number of its ejections, as
    /// long as no more than the maximum share of the cluster is ejected.
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome) {
        let Some(outlier) = &self.cluster.outlier else {
            return;
        };
        let mut health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ejected_now = health.values().filter(|h| h.ejected(now)).count();
        let entry = health.entry(endpoint).or_default();
        match outcome {
            Outcome::Success => {
                entry.consecutive_5xx = 0;
                entry.consecutive_gateway = 0;
                return;
            }
            Outcome::ServerError => {
                entry.consecutive_5xx += 1;
                entry.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                entry.consecutive_5xx += 1;
                entry.consecutive_gateway += 1;
            }
        }
        let tripped = (outlier.consecutive_5xx > 0
            && entry.consecutive_5xx >= outlier.consecutive_5xx)
            || (outlier.consecutive_gateway > 0
                && entry.consecutive_gateway >= outlier.consecutive_gateway);
        let total = self.cluster.endpoints.len().max(1);
        let allowed = (ejected_now + 1) * 100 <= total * outlier.max_ejection_percent as usize;
        if tripped && !entry.ejected(now) && allowed {
            entry.ejections += 1;
            entry.ejected_until = Some(now + outlier.base_ejection * entry.ejections);
            entry.consecutive_5xx = 0;
            entry.consecutive_gateway = 0;
            tracing::info!(
                cluster = self.cluster.name,
                %endpoint,
                "endpoint ejected (outlier detection)"
            );
        }
    }

    /// A healthy endpoint of the cluster by its policy; `None` when none is healthy. A
    /// consistent-hash cluster uses `hash` (a request without one gets a random endpoint).
    /// Endpoints ejected by outlier detection are skipped.
    pub fn pick(&self, hash: Option<u64>) -> Option<Pick<'a>> {
        let cluster = self.cluster;
        let ejected: Vec<SocketAddr> = if cluster.outlier.is_some() {
            let health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            health
                .iter()
                .filter(|(_, h)| h.ejected(now))
                .map(|(address, _)| *address)
                .collect()
        } else {
            Vec::new()
        };
        let usable = |e: &&Endpoint| e.healthy && !ejected.contains(&e.address);
        // The n-th usable endpoint, without collecting them (this runs for every request).
        let healthy = cluster.endpoints.iter().filter(usable).count();
        let nth = |n: usize| cluster.endpoints.iter().filter(usable).nth(n);
        if healthy == 0 {
            return None;
        }
        let hashed = match (cluster.lb, hash) {
            (LoadBalancer::RingHash, Some(key)) => hash::ring_lookup(&cluster.hash_table, key),
            (LoadBalancer::Maglev, Some(key)) => hash::maglev_lookup(&cluster.hash_table, key),
            _ => None,
        };
        let active = |endpoint: &Endpoint| {
            self.state
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
                    .find(usable)?
            }
            LoadBalancer::RoundRobin => {
                nth(self.state.next.fetch_add(1, Ordering::Relaxed) % healthy)?
            }
            LoadBalancer::Random | LoadBalancer::RingHash | LoadBalancer::Maglev => {
                nth(fastrand::usize(..healthy))?
            }
            LoadBalancer::LeastRequest => {
                let a = nth(fastrand::usize(..healthy))?;
                let b = nth(fastrand::usize(..healthy))?;
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

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
