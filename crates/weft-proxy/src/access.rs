//! What each request leaves behind when it is done: a line in the access log, under the log
//! target `access` (turn it off with `--log info,access=off`), with Envoy's response flags
//! for what the proxy answered itself; its count and duration in the metrics; and, unless
//! `--debug-headers` is on, no response-flags header in the response.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::metrics::{Finished, Metrics, Reporter};
use crate::outbound::RESPONSE_FLAGS;
use crate::upstream::Body;

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct Entry {
    reporter: Reporter,
    /// The destination service's host, for the metrics.
    service: String,
    grpc: bool,
    started: Instant,
    /// What the log line needs; nothing when the access log is off.
    logged: Option<Logged>,
}

#[derive(Debug)]
struct Logged {
    method: String,
    authority: String,
    path: String,
    protocol: String,
}

impl Entry {
    /// Notes a request as it arrives at the outbound side (`Reporter::Source`) or the
    /// inbound side (`Reporter::Destination`).
    pub fn of(reporter: Reporter, request: &Request<Incoming>) -> Self {
        let (service, grpc) = crate::metrics::describe(request);
        let logged = tracing::enabled!(target: "access", tracing::Level::INFO).then(|| {
            let authority = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    request
                        .headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            Logged {
                method: request.method().to_string(),
                authority,
                path: request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
                protocol: format!("{:?}", request.version()),
            }
        });
        Self {
            reporter,
            service,
            grpc,
            started: Instant::now(),
            logged,
        }
    }

    /// Records the request once the response head is ready: the log line, the metrics (the
    /// caller's SPIFFE ID as `peer`, when the inbound side verified one), and the
    /// response-flags header kept only with `debug_headers`.
    pub fn finish(
        self,
        response: &mut Response<Body>,
        metrics: &Metrics,
        peer: Option<&str>,
        debug_headers: bool,
    ) {
        let duration = self.started.elapsed();
        let flags = response_flags(response);
        if let Some(logged) = self.logged {
            tracing::info!(
                target: "access",
                direction = match self.reporter {
                    Reporter::Source => "outbound",
                    Reporter::Destination => "inbound",
                },
                method = logged.method,
                authority = logged.authority,
                path = logged.path,
                protocol = logged.protocol,
                status = response.status().as_u16(),
                flags,
                duration_ms = duration.as_millis() as u64,
                "request"
            );
        }
        metrics.record(&Finished {
            reporter: self.reporter,
            service: &self.service,
            peer,
            grpc: self.grpc,
            status: response.status().as_u16(),
            flags,
            duration,
        });
        if !debug_headers {
            response.headers_mut().remove(&RESPONSE_FLAGS);
        }
    }
}

/// The Envoy response flags of a response the proxy made itself; `-` for none.
fn response_flags(response: &Response<Body>) -> &str {
    response
        .headers()
        .get(&RESPONSE_FLAGS)
        .and_then(|f| f.to_str().ok())
        .unwrap_or("-")
}
