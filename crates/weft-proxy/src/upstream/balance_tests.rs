//! Circuit breakers, outlier detection and the balancers, on paused time.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::model::{Outlier, UpstreamHttp};

fn cluster(endpoints: u8, lb: LoadBalancer) -> Cluster {
    Cluster {
        name: "outbound|80||echo.test.svc.cluster.local".into(),
        lb,
        endpoints: (1..=endpoints)
            .map(|n| Endpoint {
                address: SocketAddr::from(([10, 0, 0, n], 80)),
                weight: 1,
                healthy: true,
                mesh: false,
                identity: None,
            })
            .collect(),
        mesh_tls: None,
        default_tls: None,
        protocol: UpstreamHttp::Http1,
        connect_timeout: Duration::from_secs(1),
        passthrough: false,
        hash_table: Vec::new(),
        max_requests: u32::MAX,
        max_retries: u32::MAX,
        outlier: None,
    }
}

fn picked(balancer: &ClusterBalancer<'_>, times: usize) -> HashSet<SocketAddr> {
    (0..times)
        .filter_map(|_| balancer.pick(None).map(|p| p.endpoint.address))
        .collect()
}

#[test]
fn the_circuit_breaker_admits_up_to_its_limit_and_frees_a_place_when_one_ends() {
    let mut cluster = cluster(1, LoadBalancer::RoundRobin);
    cluster.max_requests = 2;
    cluster.max_retries = 0;
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    let first = balancer.admit();
    let second = balancer.admit();
    assert!(first.is_some() && second.is_some());
    assert!(balancer.admit().is_none(), "a third request overflows");
    drop(first);
    let third = balancer.admit();
    assert!(third.is_some(), "the place is free again");
    assert!(
        balancer.admit_retry().is_none(),
        "maxRetries 0 admits no retry"
    );
    // The state outlives the lookup: another request of the same cluster sees it.
    let again = balancers.of(&cluster);
    assert!(again.admit().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_in_a_row_is_ejected_for_longer_each_time() {
    let mut cluster = cluster(2, LoadBalancer::RoundRobin);
    cluster.outlier = Some(Outlier {
        consecutive_5xx: 2,
        consecutive_gateway: 0,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
    });
    let failing = cluster.endpoints[0].address;
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    balancer.report(failing, Outcome::ServerError);
    assert_eq!(picked(&balancer, 4).len(), 2, "one failure ejects nothing");
    balancer.report(failing, Outcome::GatewayError);
    assert!(
        !picked(&balancer, 4).contains(&failing),
        "two in a row eject it"
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        picked(&balancer, 4).contains(&failing),
        "back after the base ejection time"
    );

    balancer.report(failing, Outcome::ServerError);
    balancer.report(failing, Outcome::ServerError);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(
        !picked(&balancer, 4).contains(&failing),
        "the second ejection lasts twice as long"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(picked(&balancer, 4).contains(&failing));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count_and_the_ejected_share_is_capped() {
    let mut cluster = cluster(2, LoadBalancer::RoundRobin);
    cluster.outlier = Some(Outlier {
        consecutive_5xx: 2,
        consecutive_gateway: 0,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 50,
    });
    let (a, b) = (cluster.endpoints[0].address, cluster.endpoints[1].address);
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    balancer.report(a, Outcome::ServerError);
    balancer.report(a, Outcome::Success);
    balancer.report(a, Outcome::ServerError);
    assert!(
        picked(&balancer, 4).contains(&a),
        "the success broke the run"
    );
    balancer.report(a, Outcome::ServerError);
    assert!(!picked(&balancer, 4).contains(&a));
    balancer.report(b, Outcome::ServerError);
    balancer.report(b, Outcome::ServerError);
    assert!(
        picked(&balancer, 4).contains(&b),
        "at most half of the cluster is ejected"
    );
}

#[test]
fn gateway_errors_eject_only_when_asked_to() {
    let mut cluster = cluster(2, LoadBalancer::RoundRobin);
    cluster.outlier = Some(Outlier {
        consecutive_5xx: 0,
        consecutive_gateway: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
    });
    let failing = cluster.endpoints[0].address;
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    balancer.report(failing, Outcome::ServerError);
    assert!(
        picked(&balancer, 4).contains(&failing),
        "a 500 is not a gateway error"
    );
    balancer.report(failing, Outcome::GatewayError);
    assert!(!picked(&balancer, 4).contains(&failing));
}

#[test]
fn round_robin_takes_each_healthy_endpoint_in_turn() {
    let mut cluster = cluster(3, LoadBalancer::RoundRobin);
    cluster.endpoints[1].healthy = false;
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    let order: Vec<_> = (0..4)
        .filter_map(|_| balancer.pick(None).map(|p| p.endpoint.address))
        .collect();
    let (first, third) = (cluster.endpoints[0].address, cluster.endpoints[2].address);
    assert_eq!(order, [first, third, first, third]);
    cluster.endpoints.iter_mut().for_each(|e| e.healthy = false);
    assert!(balancers.of(&cluster).pick(None).is_none());
}

#[test]
fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
    let cluster = cluster(2, LoadBalancer::LeastRequest);
    let balancers = Balancers::default();
    let balancer = balancers.of(&cluster);
    // Keep one request in flight on each pick of the first endpoint until it is busier.
    let busy = cluster.endpoints[0].address;
    let mut held = Vec::new();
    while held.len() < 3 {
        if let Some(pick) = balancer.pick(None).filter(|p| p.endpoint.address == busy) {
            held.push(pick);
        }
    }
    // Two random draws: both land on the busy endpoint a quarter of the time, and then it
    // is taken; the rest of the time the idle one wins.
    let idle = (0..400)
        .filter(|_| {
            balancer
                .pick(None)
                .is_some_and(|p| p.endpoint.address != busy)
        })
        .count();
    assert!(
        (250..=350).contains(&idle),
        "{idle} of 400 went to the idle endpoint"
    );
}
