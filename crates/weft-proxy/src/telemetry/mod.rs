//! What the proxy tells about the requests it serves: a line per request in the access log
//! and Istio's request metrics ([`access_log`] records each request into both), served in
//! Prometheus' format ([`metrics`]).

pub mod access_log;
pub mod metrics;
