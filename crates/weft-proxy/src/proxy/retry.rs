//! The attempts of one forwarded request (VirtualService `retries` and `timeout`), as Envoy
//! makes them: each attempt goes to an endpoint the cluster's balancer picks — another than
//! those tried, when there is one (Istio's previous-hosts predicate) — after a jittered
//! backoff of 25 ms doubling; each has the per-try timeout, and all together the route's
//! timeout. A retry also needs a place under the cluster's `maxRetries` circuit breaker,
//! taken only once a retry is due. Only a request whose body is small and whole
//! ([`Replay`]) can be sent again.
//!
//! [`attempts`] takes the step that sends one attempt as a closure, so the logic is tested
//! here on paused time, without sockets.

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use tokio::time::Instant;

use crate::error::{ProxyError, UpstreamError};
use crate::http::headers::GRPC_STATUS;
use crate::http::{Body, BodyError, BoxError, full};
use crate::model::{Endpoint, Retry};
use crate::upstream::balance::{ClusterBalancer, Outcome, Pick};

/// The largest request body kept so the request can be retried (Envoy buffers 64 KiB).
const MAX_REPLAYED_BODY: u64 = 64 * 1024;

/// How many times the balancer is asked for an endpoint not tried yet before one tried
/// before is taken.
const FRESH_PICKS: usize = 5;

/// A route's retries and deadline.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Retries, if any.
    pub retry: Option<&'a Retry>,
    /// The whole request's deadline, if any.
    pub timeout: Option<Duration>,
}

/// A request body as the attempts send it.
#[derive(Debug)]
pub enum Replay {
    /// Sent once, as it streams in.
    Once(Body),
    /// Kept whole, so that each attempt sends it again.
    Again(Bytes),
}

impl Replay {
    /// Keeps the body for retries when the route has some and the body is at most 64 KiB
    /// (by its declared size); streams it otherwise.
    pub async fn prepare<B>(body: B, retry: Option<&Retry>) -> Result<Self, ProxyError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAYED_BODY);
        if !(retry.is_some_and(|r| r.retries > 0) && small) {
            return Ok(Self::Once(
                body.map_err(|error| BodyError(error.into())).boxed(),
            ));
        }
        if body.is_end_stream() {
            return Ok(Self::Again(Bytes::new()));
        }
        match body.collect().await {
            Ok(collected) => Ok(Self::Again(collected.to_bytes())),
            Err(error) => {
                if crate::http::is_stream_idle(&error.into()) {
                    Err(ProxyError::StreamIdle)
                } else {
                    Err(ProxyError::BadRequest("the request body broke off"))
                }
            }
        }
    }
}

/// Makes the attempts of one request to the cluster `balancer` balances, each sent by
/// `send`; returns the response to pass on, or why there is none.
pub async fn attempts<'c, S, F>(
    balancer: &ClusterBalancer<'c>,
    policy: Policy<'_>,
    hash: Option<u64>,
    mut parts: Parts,
    body: Replay,
    mut send: S,
) -> Result<Response<Body>, ProxyError>
where
    S: FnMut(&'c Endpoint, Request<Body>) -> F,
    F: Future<Output = Result<Response<Body>, UpstreamError>>,
{
    let (mut once, replay) = match body {
        Replay::Once(body) => (Some(body), None),
        Replay::Again(bytes) => (None, Some(bytes)),
    };
    let attempts = match (policy.retry, &replay) {
        (Some(retry), Some(_)) => 1 + retry.retries,
        _ => 1,
    };
    let deadline = policy.timeout.map(|t| Instant::now() + t);
    let mut tried = Vec::new();
    let mut retry_place = None;
    let mut last_error = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let pick = next_endpoint(balancer, hash, &tried).ok_or(ProxyError::NoHealthyUpstream)?;
        let address = pick.endpoint.address;
        if attempts > 1 {
            tried.push(address);
        }
        let body = match (&replay, once.take()) {
            (Some(bytes), _) => full(bytes.clone()),
            (None, Some(body)) => body,
            (None, None) => break,
        };
        let last = attempt + 1 == attempts;
        let sending = send(pick.endpoint, request_for(&mut parts, body, last));
        let result = match try_deadline(policy.retry, deadline) {
            Some(at) => match tokio::time::timeout_at(at, sending).await {
                Ok(result) => result,
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(ProxyError::Timeout);
                }
                Err(_) => {
                    last_error = Some(ProxyError::Timeout);
                    continue;
                }
            },
            None => sending.await,
        };
        drop(pick);
        let retry = policy.retry.filter(|_| !last);
        let mut admit_retry = || {
            retry_place = balancer.admit_retry();
            retry_place.is_some()
        };
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                balancer.report(
                    address,
                    match status {
                        502..=504 => Outcome::GatewayError,
                        500.. => Outcome::ServerError,
                        _ => Outcome::Success,
                    },
                );
                let grpc_status = response
                    .headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                if retry.is_some_and(|r| retries_response(r, status, grpc_status)) && admit_retry()
                {
                    continue;
                }
                return Ok(response);
            }
            Err(error) => {
                balancer.report(address, Outcome::GatewayError);
                tracing::debug!(%error, cluster = balancer.cluster_name(), attempt, "upstream failed");
                let retried = retry.is_some_and(|r| retries_failure(r, &error));
                last_error = Some(ProxyError::Upstream(error));
                if !(retried && admit_retry()) {
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or(ProxyError::RetriesExhausted))
}

/// Envoy's backoff before retry number `attempt`: up to 25 ms doubling (at most 400 ms),
/// jittered.
fn backoff(attempt: u32) -> Duration {
    let base = 25u64 << (attempt - 1).min(4);
    Duration::from_millis(fastrand::u64(0..=base))
}

/// When the next attempt must have its answer: the per-try timeout, cut by the route's
/// deadline.
fn try_deadline(retry: Option<&Retry>, deadline: Option<Instant>) -> Option<Instant> {
    match (retry.and_then(|r| r.per_try_timeout), deadline) {
        (Some(per_try), Some(overall)) => Some((Instant::now() + per_try).min(overall)),
        (Some(per_try), None) => Some(Instant::now() + per_try),
        (None, overall) => overall,
    }
}

/// An endpoint for the next attempt: one not tried yet, when the balancer offers one.
fn next_endpoint<'c>(
    balancer: &ClusterBalancer<'c>,
    hash: Option<u64>,
    tried: &[std::net::SocketAddr],
) -> Option<Pick<'c>> {
    let mut pick = None;
    for _ in 0..FRESH_PICKS {
        let candidate = balancer.pick(hash);
        let fresh = candidate
            .as_ref()
            .is_some_and(|p| !tried.contains(&p.endpoint.address));
        pick = candidate;
        if fresh {
            break;
        }
    }
    pick
}

/// The request of one attempt: the last takes the request's head, earlier ones copy it.
fn request_for(parts: &mut Parts, body: Body, last: bool) -> Request<Body> {
    let mut request = Request::new(body);
    *request.version_mut() = parts.version;
    if last {
        *request.method_mut() = std::mem::take(&mut parts.method);
        *request.uri_mut() = std::mem::take(&mut parts.uri);
        *request.headers_mut() = std::mem::take(&mut parts.headers);
    } else {
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
    }
    request
}

/// Whether an attempt that could not connect, or broke off, is retried.
fn retries_failure(retry: &Retry, error: &UpstreamError) -> bool {
    let on = &retry.on;
    let connect = error.is_connect_failure();
    on.server_error
        || on.gateway_error
        || on.reset
        || (connect && on.connect_failure)
        || (!connect && on.refused_stream)
}

/// Whether a response is retried: by its status, or by its gRPC status.
fn retries_response(retry: &Retry, status: u16, grpc_status: Option<u32>) -> bool {
    let on = &retry.on;
    (status >= 500 && on.server_error)
        || (matches!(status, 502..=504) && on.gateway_error)
        || (on.status_codes && retry.status_codes.contains(&status))
        || match grpc_status {
            Some(1) => on.grpc_cancelled,
            Some(4) => on.grpc_deadline_exceeded,
            Some(8) => on.grpc_resource_exhausted,
            Some(13) => on.grpc_internal,
            Some(14) => on.grpc_unavailable,
            _ => false,
        }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
