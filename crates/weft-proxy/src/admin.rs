//! The admin server, on loopback: what the proxy runs with, for people and for
//! `weft proxy-config`.
//!
//! * `/healthz/ready` — 200 once the proxy has a certificate and a first configuration;
//! * `/config_dump` — the model in force, as JSON, with the xDS versions it came from;
//! * `/clusters` — each cluster's endpoints, health, weight and expected identity;
//! * `/certs` — the workload certificate (SPIFFE ID, serial, validity) and the root's expiry;
//! * `POST /quitquitquit` — drain and exit (see `drain`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::tls::identity::CurrentIdentity;
use crate::xds::Applied;

/// What the admin pages read.
#[derive(Clone)]
pub struct Admin {
    /// The configuration in force.
    pub config: watch::Receiver<Arc<Applied>>,
    /// The workload identity.
    pub identity: CurrentIdentity,
    /// Started by `POST /quitquitquit`.
    pub drain: Arc<crate::drain::Drain>,
}

impl Admin {
    /// Whether the proxy has a certificate and a whole first configuration: listeners and
    /// clusters answered (even if rejected, as Envoy's warming counts them), with the routes
    /// and endpoints they name.
    pub fn ready(&self) -> bool {
        self.identity.get().is_some() && self.config.borrow().warm
    }

    /// Serves the admin pages on `listener` forever.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(&request)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/quitquitquit") => {
                let drain = self.drain.clone();
                tokio::spawn(async move { drain.drain().await });
                text(StatusCode::OK, "draining\n")
            }
            (&Method::GET, "/healthz/ready") if self.ready() => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/healthz/ready") => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: waiting for a certificate and a first configuration\n",
            ),
            (&Method::GET, "/config_dump") => json_response(self.config_dump()),
            (&Method::GET, "/clusters") => json_response(self.clusters()),
            (&Method::GET, "/certs") => json_response(self.certs()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz/ready, /config_dump, /clusters, /certs or POST /quitquitquit\n",
            ),
        }
    }

    fn config_dump(&self) -> Value {
        let config = self.config.borrow().clone();
        json!({
            "versions": config.versions,
            "model": serde_json::to_value(&*config.model).unwrap_or(Value::Null),
        })
    }

    fn clusters(&self) -> Value {
        let config = self.config.borrow().clone();
        let mut clusters: Vec<Value> = config
            .model
            .clusters
            .values()
            .map(|c| serde_json::to_value(&**c).unwrap_or(Value::Null))
            .collect();
        clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({ "clusters": clusters })
    }

    fn certs(&self) -> Value {
        match self.identity.get() {
            Some(identity) => json!({
                "spiffeId": identity.spiffe_id,
                "serial": identity.serial,
                "notBefore": rfc3339(identity.not_before),
                "notAfter": rfc3339(identity.not_after),
                "root": { "notAfter": rfc3339(identity.root_not_after) },
            }),
            None => json!({ "spiffeId": null }),
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
