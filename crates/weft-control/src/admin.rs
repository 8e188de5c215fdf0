//! The debug server (`--debug-addr`, loopback by default): read-only JSON views of what the
//! control plane knows, for people and for `weft proxy-status`.
//!
//! * `/ready` — 200 once the configuration is loaded;
//! * `/debug/syncz` — each connected proxy: node id, per type the version sent and ACKed,
//!   the last NACK and its error;
//! * `/debug/analysis` — the messages about the configuration, as `weft analyze -o json`;
//! * `/debug/config_dump?proxy=ID` — what one proxy was sent, as an Envoy config dump in
//!   JSON; `ID` is its node id, the `name.namespace` of an Istio-format node id, or the
//!   stream number `/debug/syncz` shows;
//! * `/debug/registry` — services, ports and endpoints;
//! * `/metrics` — Prometheus metrics: connected proxies, pushes and their build time, NACKs,
//!   reloads, resources and messages, certificates issued and refused.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_xds::server::Ledger;

use crate::model::MeshSnapshot;
use crate::store::ConfigState;
use crate::translate::MeshGenerator;

/// What the debug pages read.
#[derive(Clone)]
pub struct DebugState {
    /// Stream status.
    pub ledger: Ledger,
    /// The configuration in force.
    pub config: watch::Receiver<Arc<ConfigState>>,
    /// The snapshot being served.
    pub generator: Arc<MeshGenerator>,
    /// Prometheus metrics.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

/// Serves the debug pages on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: DebugState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &DebugState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match request.uri().path() {
        "/ready" => text(StatusCode::OK, "ready\n"),
        "/metrics" => metrics(&state.registry),
        "/debug/syncz" => json_response(syncz(&state.ledger)),
        "/debug/analysis" => json_response(analysis(&state.config.borrow())),
        "/debug/registry" => json_response(registry(&state.generator.current())),
        "/debug/config_dump" => config_dump(&state.ledger, request.uri().query()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /metrics, /debug/syncz, /debug/analysis, /debug/config_dump?proxy=ID or /debug/registry\n",
        ),
    }
}

fn metrics(registry: &prometheus_client::registry::Registry) -> Response<Full<Bytes>> {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(content_type) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, content_type);
    }
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(content_type) = "application/json".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, content_type);
    }
    response
}

fn syncz(ledger: &Ledger) -> Value {
    let streams: Vec<Value> = ledger
        .snapshot()
        .into_iter()
        .map(|(id, status)| {
            let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("stream".to_string(), json!(id));
            }
            value
        })
        .collect();
    json!({ "proxies": streams })
}

/// The config dump of the proxy the query's `proxy` names; the newest stream wins when one
/// proxy has several.
fn config_dump(ledger: &Ledger, query: Option<&str>) -> Response<Full<Bytes>> {
    let streams = ledger.snapshot();
    let known = || {
        streams
            .values()
            .map(|s| s.node_id.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let Some(wanted) = query_param(query.unwrap_or(""), "proxy") else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("say which proxy: ?proxy=ID; connected now:\n{}\n", known()),
        );
    };
    let found = streams.iter().rev().find(|(id, status)| {
        status.node_id == wanted
            || id.to_string() == wanted
            || status.node_id.split('~').nth(2) == Some(wanted.as_str())
    });
    let Some((_, status)) = found else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no connected proxy is {wanted:?}; connected now:\n{}\n",
                known()
            ),
        );
    };
    let dump = weft_xds::types::pack(&weft_xds::dump::config_dump(&status.types));
    match weft_xds::dump::any_to_json(&dump) {
        Ok(json) => json_response(json),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the config dump cannot be shown: {error}\n"),
        ),
    }
}

/// The value of `name` in a URL query, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn analysis(state: &ConfigState) -> Value {
    json!({
        "generation": state.generation,
        "resources": state.resources.len(),
        "messages": state.messages.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
    })
}

fn registry(snapshot: &MeshSnapshot) -> Value {
    let services: Vec<Value> = snapshot
        .services
        .values()
        .map(|service| {
            json!({
                "host": service.host,
                "namespace": service.namespace,
                "ports": service.ports.iter().map(|p| json!({"number": p.number, "name": p.name, "protocol": p.protocol.as_str()})).collect::<Vec<_>>(),
                "endpoints": service.endpoints.iter().map(|e| json!({
                    "address": e.address,
                    "ports": e.ports,
                    "labels": e.labels,
                    "serviceAccount": e.service_account,
                    "locality": e.locality,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "generation": snapshot.generation, "services": services })
}
