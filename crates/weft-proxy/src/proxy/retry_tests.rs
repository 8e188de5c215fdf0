//! The retry loop on paused time: what each attempt is sent, where, and when.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::cell::RefCell;
use std::future::{Future, pending};
use std::net::SocketAddr;
use std::pin::Pin;

use hyper::StatusCode;
use hyper::header::HeaderValue;

use super::*;
use crate::error::ConnectError;
use crate::model::{Cluster, LoadBalancer, RetryOn, UpstreamHttp};
use crate::upstream::balance::Balancers;

fn cluster(endpoints: u16, max_retries: u32) -> Cluster {
    Cluster {
        name: "outbound|80||echo.test.svc.cluster.local".into(),
        lb: LoadBalancer::Random,
        endpoints: (1..=endpoints)
            .map(|n| Endpoint {
                address: SocketAddr::from(([10, 0, 0, n as u8], 80)),
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
        max_retries,
        outlier: None,
    }
}

fn retry(retries: u32, on: &str, per_try_timeout: Option<Duration>) -> Retry {
    Retry {
        retries,
        on: RetryOn::parse(on),
        status_codes: Vec::new(),
        per_try_timeout,
    }
}

fn parts() -> Parts {
    Request::get("/").body(()).unwrap().into_parts().0
}

fn status(code: u16) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

/// What one attempt does.
enum Step {
    Answer(u16),
    Grpc(u32),
    Hang,
    Refused,
    Reset,
}

type Sent<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + 'a>>;

/// Runs the attempts of a request whose upstream does `steps` in turn; returns the result
/// and the endpoints each attempt went to, with the body each carried.
async fn run(
    cluster: &Cluster,
    policy: Policy<'_>,
    body: Replay,
    steps: Vec<Step>,
) -> (Result<Response<Body>, ProxyError>, Vec<(SocketAddr, Bytes)>) {
    let balancers = Balancers::default();
    let balancer = balancers.of(cluster);
    let sent = RefCell::new(Vec::new());
    let steps = RefCell::new(steps.into_iter());
    let result = attempts(
        &balancer,
        policy,
        None,
        parts(),
        body,
        |endpoint, request| {
            let address = endpoint.address;
            let step = steps.borrow_mut().next().unwrap_or(Step::Answer(200));
            let sent = &sent;
            Box::pin(async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                sent.borrow_mut().push((address, body));
                match step {
                    Step::Answer(code) => Ok(status(code)),
                    Step::Grpc(code) => {
                        let mut response = status(200);
                        response
                            .headers_mut()
                            .insert(GRPC_STATUS.clone(), HeaderValue::from(code));
                        Ok(response)
                    }
                    Step::Hang => pending().await,
                    Step::Refused => Err(UpstreamError::Connect(ConnectError::Io {
                        target: address.to_string(),
                        error: std::io::ErrorKind::ConnectionRefused.into(),
                    })),
                    Step::Reset => Err(UpstreamError::Reset("reset by peer".into())),
                }
            }) as Sent<'_>
        },
    )
    .await;
    (result, sent.into_inner())
}

fn again(text: &'static str) -> Replay {
    Replay::Again(Bytes::from_static(text.as_bytes()))
}

#[tokio::test(start_paused = true)]
async fn a_5xx_is_tried_again_on_another_endpoint_until_one_answers() {
    let cluster = cluster(3, u32::MAX);
    let retry = retry(3, "5xx", None);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let steps = vec![Step::Answer(503), Step::Answer(500), Step::Answer(200)];
    let (result, sent) = run(&cluster, policy, again("order"), steps).await;
    assert_eq!(result.unwrap().status(), 200);
    assert_eq!(sent.len(), 3);
    let mut endpoints: Vec<_> = sent.iter().map(|(address, _)| *address).collect();
    endpoints.dedup();
    assert_eq!(
        endpoints.len(),
        3,
        "each attempt went to a new endpoint: {sent:?}"
    );
    assert!(
        sent.iter().all(|(_, body)| body == "order"),
        "the body went each time"
    );
}

#[tokio::test(start_paused = true)]
async fn without_retries_the_first_answer_is_passed_on() {
    let cluster = cluster(3, u32::MAX);
    let policy = Policy {
        retry: None,
        timeout: None,
    };
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Answer(503)]).await;
    assert_eq!(result.unwrap().status(), 503);
    assert_eq!(sent.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_attempts_answer_is_passed_on_when_retries_run_out() {
    let cluster = cluster(2, u32::MAX);
    let retry = retry(2, "5xx", None);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let steps = vec![Step::Answer(503), Step::Answer(503), Step::Answer(502)];
    let (result, sent) = run(&cluster, policy, again(""), steps).await;
    assert_eq!(result.unwrap().status(), 502);
    assert_eq!(sent.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_on_to_the_next_attempt() {
    let cluster = cluster(2, u32::MAX);
    let retry = retry(2, "5xx", Some(Duration::from_secs(1)));
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let started = Instant::now();
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Hang]).await;
    assert_eq!(result.unwrap().status(), 200);
    assert_eq!(sent.len(), 2);
    let elapsed = started.elapsed();
    // One per-try timeout, then at most the first backoff (25 ms).
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_millis(1025),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_routes_timeout_ends_the_attempts_with_504() {
    let cluster = cluster(2, u32::MAX);
    let retry = retry(10, "5xx", Some(Duration::from_secs(1)));
    let policy = Policy {
        retry: Some(&retry),
        timeout: Some(Duration::from_millis(2500)),
    };
    let started = Instant::now();
    let steps = (0..11).map(|_| Step::Hang).collect();
    let (result, sent) = run(&cluster, policy, again(""), steps).await;
    assert!(matches!(result, Err(ProxyError::Timeout)));
    assert_eq!(started.elapsed(), Duration::from_millis(2500));
    // At 0 s, after the first per-try timeout, and after the second; the third is cut.
    assert_eq!(sent.len(), 3, "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_is_retried_under_connect_failure_and_a_reset_is_not() {
    let cluster = cluster(2, u32::MAX);
    let retry = retry(1, "connect-failure", None);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Refused]).await;
    assert_eq!(result.unwrap().status(), 200);
    assert_eq!(sent.len(), 2);

    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Reset]).await;
    let error = result.err().unwrap();
    assert_eq!(error.status(), 503);
    assert_eq!(error.flag().map(|f| f.as_str()), Some("UR"));
    assert_eq!(sent.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_keeps_its_io_error_kind() {
    let cluster = cluster(1, u32::MAX);
    let policy = Policy {
        retry: None,
        timeout: None,
    };
    let (result, _) = run(&cluster, policy, again(""), vec![Step::Refused]).await;
    match result {
        Err(ProxyError::Upstream(UpstreamError::Connect(error))) => {
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_is_retried_by_its_name() {
    let cluster = cluster(2, u32::MAX);
    let retry = retry(1, "unavailable", None);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Grpc(14)]).await;
    assert_eq!(result.unwrap().status(), 200);
    assert_eq!(sent.len(), 2);
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Grpc(13)]).await;
    assert_eq!(result.unwrap().headers()[&GRPC_STATUS], "13");
    assert_eq!(sent.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_goes_out_without_a_place_under_max_retries() {
    let cluster = cluster(2, 0);
    let retry = retry(3, "5xx", None);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let (result, sent) = run(&cluster, policy, again(""), vec![Step::Answer(503)]).await;
    assert_eq!(result.unwrap().status(), 503);
    assert_eq!(sent.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_keep_is_sent_once() {
    let large = http_body_util::Full::new(Bytes::from(vec![b'x'; 70 * 1024]));
    let retry = retry(3, "5xx", None);
    let body = Replay::prepare(large, Some(&retry)).await.unwrap();
    assert!(matches!(body, Replay::Once(_)));
    let small = http_body_util::Full::new(Bytes::from_static(b"small"));
    let body = Replay::prepare(small, Some(&retry)).await.unwrap();
    assert!(matches!(&body, Replay::Again(bytes) if bytes == "small"));

    let cluster = cluster(2, u32::MAX);
    let policy = Policy {
        retry: Some(&retry),
        timeout: None,
    };
    let large = http_body_util::Full::new(Bytes::from(vec![b'x'; 70 * 1024]));
    let body = Replay::prepare(large, Some(&retry)).await.unwrap();
    let (result, sent) = run(&cluster, policy, body, vec![Step::Answer(503)]).await;
    assert_eq!(result.unwrap().status(), 503);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 70 * 1024);
}

#[tokio::test(start_paused = true)]
async fn no_healthy_endpoint_is_503_uh() {
    let mut cluster = cluster(1, u32::MAX);
    cluster.endpoints[0].healthy = false;
    let policy = Policy {
        retry: None,
        timeout: None,
    };
    let (result, sent) = run(&cluster, policy, again(""), Vec::new()).await;
    let error = result.err().unwrap();
    assert_eq!(
        (error.status().as_u16(), error.flag().map(|f| f.as_str())),
        (503, Some("UH"))
    );
    assert!(sent.is_empty());
}
