//! Request metrics in Prometheus' text format, served on the metrics port at
//! `/stats/prometheus` (Istio's path on its port 15020), under Istio's standard names:
//! `istio_requests_total` and `istio_request_duration_milliseconds`, labelled as Istio
//! labels them. The outbound side reports as `source`, the inbound side as `destination`.
//! Peers' workload names are not exchanged between sidecars, so they read `unknown`; the
//! caller's principal (its SPIFFE ID) is known at the inbound side from its certificate.
//!
//! Recording takes one uncontended lock and, once a label set has been seen, allocates
//! nothing. Labels a client could make up are bounded: a request no route knew counts under
//! the service `unknown` (its Host is the client's word), at most [`MAX_SERVICES`] services
//! get a label of their own, and past [`MAX_SERIES`] label sets new ones are only counted in
//! `weft_metric_series_dropped_total`, so no client grows the proxy's memory or its scrape.

use foldhash::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::ResponseFlag;

/// Upper bounds of the duration histogram's buckets, in milliseconds (Istio's).
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Most destination services labelled by name; the rest count as `unknown`.
pub const MAX_SERVICES: usize = 256;

/// Most label sets kept; requests that would make more are counted as dropped.
pub const MAX_SERIES: usize = 10_000;

/// The service label of what is not a known service.
const UNKNOWN: &str = "unknown";

/// Which side of the call reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The callee's sidecar (inbound).
    Destination,
}

/// One finished request, as the metrics see it.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Who reports it.
    pub reporter: Reporter,
    /// The destination service's host, without port.
    pub service: &'a str,
    /// The caller's SPIFFE ID, when the inbound side verified one.
    pub peer: Option<&'a str>,
    /// Whether it was gRPC.
    pub grpc: bool,
    /// Response status.
    pub status: u16,
    /// Envoy response flags, `-` for none.
    pub flags: &'a str,
    /// Time to the response head.
    pub duration: Duration,
}

/// The labels besides the service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Labels {
    reporter: Reporter,
    peer: Option<String>,
    grpc: bool,
    status: u16,
    flags: String,
}

#[derive(Debug)]
struct Series {
    labels: Labels,
    count: u64,
    sum_ms: f64,
    buckets: [u64; DURATION_BUCKETS_MS.len()],
}

/// The proxy's request metrics.
#[derive(Debug)]
pub struct Metrics {
    workload: String,
    namespace: String,
    /// The series of each destination service.
    services: Mutex<Recorded>,
}

/// The series recorded, by destination service, and what the bounds left out.
#[derive(Debug, Default)]
struct Recorded {
    by_service: HashMap<String, Vec<Series>>,
    series: usize,
    dropped: u64,
}

impl Metrics {
    /// Metrics of the sidecar of `workload` in `namespace`.
    pub fn new(workload: &str, namespace: &str) -> Self {
        Self {
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            services: Mutex::default(),
        }
    }

    /// Counts a finished request.
    pub fn record(&self, request: &Finished<'_>) {
        let duration_ms = request.duration.as_secs_f64() * 1000.0;
        let mut recorded = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let Recorded {
            by_service,
            series: total,
            dropped,
        } = &mut *recorded;
        // A Host no route knew is the client's word, not a service.
        let known = request.flags != ResponseFlag::NoRoute.as_str()
            && (by_service.contains_key(request.service) || by_service.len() < MAX_SERVICES);
        let service = if known { request.service } else { UNKNOWN };
        let series = match by_service.get_mut(service) {
            Some(series) => series,
            None => by_service.entry(service.to_string()).or_default(),
        };
        let matches = |labels: &Labels| {
            labels.reporter == request.reporter
                && labels.peer.as_deref() == request.peer
                && labels.grpc == request.grpc
                && labels.status == request.status
                && labels.flags == request.flags
        };
        let index = match series.iter().position(|s| matches(&s.labels)) {
            Some(index) => index,
            None if *total >= MAX_SERIES => {
                *dropped += 1;
                return;
            }
            None => {
                *total += 1;
                series.push(Series {
                    labels: Labels {
                        reporter: request.reporter,
                        peer: request.peer.map(str::to_string),
                        grpc: request.grpc,
                        status: request.status,
                        flags: request.flags.to_string(),
                    },
                    count: 0,
                    sum_ms: 0.0,
                    buckets: [0; DURATION_BUCKETS_MS.len()],
                });
                series.len() - 1
            }
        };
        let entry = &mut series[index];
        entry.count += 1;
        entry.sum_ms += duration_ms;
        for (bucket, bound) in entry.buckets.iter_mut().zip(DURATION_BUCKETS_MS) {
            if duration_ms <= bound {
                *bucket += 1;
            }
        }
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let recorded = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, &Series)> = recorded
            .by_service
            .iter()
            .flat_map(|(service, series)| {
                series
                    .iter()
                    .map(move |s| (self.label_text(service, &s.labels), s))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::new();
        out.push_str(
            "# HELP istio_requests_total Requests handled, by the sidecar that reported them.\n\
             # TYPE istio_requests_total counter\n",
        );
        for (labels, series) in &all {
            let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", series.count);
        }
        out.push_str(
            "# HELP istio_request_duration_milliseconds Time from request to response head.\n\
             # TYPE istio_request_duration_milliseconds histogram\n",
        );
        for (labels, series) in &all {
            for (bound, count) in DURATION_BUCKETS_MS.iter().zip(series.buckets) {
                let _ = writeln!(
                    out,
                    "istio_request_duration_milliseconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 istio_request_duration_milliseconds_sum{{{labels}}} {}\n\
                 istio_request_duration_milliseconds_count{{{labels}}} {}",
                series.count, series.sum_ms, series.count
            );
        }
        let _ = write!(
            out,
            "# HELP weft_metric_series_dropped_total Requests not counted above: their labels would have made more than {MAX_SERIES} series.\n\
             # TYPE weft_metric_series_dropped_total counter\n\
             weft_metric_series_dropped_total {}\n",
            recorded.dropped
        );
        out
    }

    fn label_text(&self, service: &str, labels: &Labels) -> String {
        let (name, namespace) = service_name_and_namespace(service);
        let own = |value: &str| value.to_string();
        let unknown = || "unknown".to_string();
        let peer_namespace = labels
            .peer
            .as_deref()
            .and_then(|p| p.split("/ns/").nth(1))
            .and_then(|rest| rest.split('/').next())
            .map_or_else(unknown, str::to_string);
        let (source_workload, source_namespace, destination_workload, destination_namespace) =
            match labels.reporter {
                Reporter::Source => (
                    own(&self.workload),
                    own(&self.namespace),
                    unknown(),
                    unknown(),
                ),
                Reporter::Destination => (
                    unknown(),
                    peer_namespace,
                    own(&self.workload),
                    own(&self.namespace),
                ),
            };
        let pairs = [
            (
                "reporter",
                match labels.reporter {
                    Reporter::Source => "source".to_string(),
                    Reporter::Destination => "destination".to_string(),
                },
            ),
            ("source_workload", source_workload),
            ("source_workload_namespace", source_namespace),
            (
                "source_principal",
                labels.peer.clone().unwrap_or_else(unknown),
            ),
            ("destination_workload", destination_workload),
            ("destination_workload_namespace", destination_namespace),
            ("destination_service", service.to_string()),
            ("destination_service_name", name.to_string()),
            ("destination_service_namespace", namespace.to_string()),
            (
                "request_protocol",
                if labels.grpc { "grpc" } else { "http" }.to_string(),
            ),
            ("response_code", labels.status.to_string()),
            ("response_flags", labels.flags.clone()),
            (
                "connection_security_policy",
                match (labels.reporter, &labels.peer) {
                    (Reporter::Destination, Some(_)) => "mutual_tls",
                    (Reporter::Destination, None) => "none",
                    (Reporter::Source, _) => "unknown",
                }
                .to_string(),
            ),
        ];
        pairs
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Serves `/stats/prometheus` (and `/metrics`) on `listener` forever, and
    /// `/healthz/ready` as the admin port does: this port is on the bind address, where the
    /// kubelet's probes reach it (the admin port is loopback only).
    pub async fn serve(
        self: std::sync::Arc<Self>,
        listener: TcpListener,
        admin: crate::admin::Admin,
    ) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let metrics = self.clone();
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let metrics = metrics.clone();
                    let ready = admin.ready();
                    async move {
                        match request.uri().path() {
                            "/healthz/ready" if ready => {
                                Response::builder().body(Full::new(Bytes::from_static(b"ready\n")))
                            }
                            "/healthz/ready" => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(Full::new(Bytes::from_static(
                                    b"not ready: no certificate or configuration yet\n",
                                ))),
                            "/stats/prometheus" | "/metrics" => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(metrics.render()))),
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(
                                    b"not found; try /stats/prometheus\n",
                                ))),
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// The destination service's host (without port) a request names, and whether it is gRPC.
pub fn describe(request: &Request<Incoming>) -> (String, bool) {
    let host = request
        .uri()
        .host()
        .or_else(|| {
            let host = request.headers().get(hyper::header::HOST)?.to_str().ok()?;
            Some(match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            })
        })
        .unwrap_or("unknown")
        .to_string();
    let grpc = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    (host, grpc)
}

/// `name` and `namespace` of `name.namespace.svc.<domain>`; the host and `unknown` otherwise.
fn service_name_and_namespace(host: &str) -> (&str, &str) {
    let mut parts = host.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(namespace), Some("svc")) => (name, namespace),
        _ => (host, "unknown"),
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_their_labels_and_rendered_as_prometheus_text() {
        let metrics = Metrics::new("client", "test");
        let request = |status, flags, ms| Finished {
            reporter: Reporter::Source,
            service: "echo.test.svc.cluster.local",
            peer: None,
            grpc: false,
            status,
            flags,
            duration: Duration::from_millis(ms),
        };
        metrics.record(&request(200, "-", 3));
        metrics.record(&request(200, "-", 30));
        metrics.record(&request(404, "NR", 0));
        metrics.record(&Finished {
            reporter: Reporter::Destination,
            peer: Some("spiffe://cluster.local/ns/other/sa/caller"),
            grpc: true,
            ..request(200, "-", 1)
        });
        let text = metrics.render();
        assert!(text.contains(
            "istio_requests_total{reporter=\"source\",source_workload=\"client\",source_workload_namespace=\"test\",source_principal=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_service=\"echo.test.svc.cluster.local\",destination_service_name=\"echo\",destination_service_namespace=\"test\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",connection_security_policy=\"unknown\"} 2\n"
        ), "{text}");
        assert!(text.contains("response_code=\"404\",response_flags=\"NR\""));
        assert!(text.contains(
            "reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"other\",source_principal=\"spiffe://cluster.local/ns/other/sa/caller\",destination_workload=\"client\""
        ), "{text}");
        assert!(text.contains("request_protocol=\"grpc\""));
        assert!(text.contains("le=\"5\"} 1\n"), "{text}");
        assert!(text.contains("le=\"50\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2\n"), "{text}");
    }
}
