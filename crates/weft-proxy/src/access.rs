//! The access log: one line per request, under the log target `access` (turn it off with
//! `--log info,access=off`), with Envoy's response flags for what the proxy answered itself.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::outbound::RESPONSE_FLAGS;
use crate::upstream::Body;

/// What is known of a request when it arrives; nothing when the access log is off.
#[derive(Debug)]
pub struct Entry(Option<Logged>);

#[derive(Debug)]
struct Logged {
    direction: &'static str,
    method: String,
    authority: String,
    path: String,
    protocol: String,
    started: Instant,
}

impl Entry {
    /// Notes a request as it arrives, `outbound` or `inbound`.
    pub fn of(direction: &'static str, request: &Request<Incoming>) -> Self {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return Self(None);
        }
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
        Self(Some(Logged {
            direction,
            method: request.method().to_string(),
            authority,
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            protocol: format!("{:?}", request.version()),
            started: Instant::now(),
        }))
    }

    /// Writes the line, once the response head is ready.
    pub fn finish(self, response: &Response<Body>) {
        let Some(entry) = self.0 else {
            return;
        };
        let flags = response_flags(response);
        tracing::info!(
            target: "access",
            direction = entry.direction,
            method = entry.method,
            authority = entry.authority,
            path = entry.path,
            protocol = entry.protocol,
            status = response.status().as_u16(),
            flags,
            duration_ms = entry.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

/// The Envoy response flags of a response the proxy made itself; `-` for none.
pub fn response_flags(response: &Response<Body>) -> &str {
    response
        .headers()
        .get(RESPONSE_FLAGS)
        .and_then(|f| f.to_str().ok())
        .unwrap_or("-")
}
