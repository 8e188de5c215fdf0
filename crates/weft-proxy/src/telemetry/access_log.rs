//! What each request leaves behind when it is done: a line in the access log, under the log
//! target `access` (turn it off with `--log info,access=off`), with Envoy's response flags
//! for what the proxy answered itself (read from the response's extensions, where
//! [`crate::error::ProxyError::into_response`] put it); its count and duration in the
//! metrics; and, with `--debug-headers`, the flag in a response header.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response};

use hyper::header::HeaderValue;

use super::metrics::{Finished, Metrics, Reporter};
use crate::error::flag_of;
use crate::http::Body;
use crate::http::headers::RESPONSE_FLAGS;

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
        let (service, grpc) = super::metrics::describe(request);
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
    /// response-flags header with `debug_headers`: the one place it is added.
    pub fn finish(
        self,
        response: &mut Response<Body>,
        metrics: &Metrics,
        peer: Option<&str>,
        debug_headers: bool,
    ) {
        let duration = self.started.elapsed();
        let flag = flag_of(response);
        let flags = flag.map_or("-", |f| f.as_str());
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
        if debug_headers && let Some(flag) = flag {
            response.headers_mut().insert(
                RESPONSE_FLAGS.clone(),
                HeaderValue::from_static(flag.as_str()),
            );
        }
    }
}
