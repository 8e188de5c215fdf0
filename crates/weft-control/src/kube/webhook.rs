//! The admission webhooks the API server calls, over TLS with a certificate from the mesh
//! CA:
//!
//! * `/inject`, for every pod being created in a namespace (or with a label) that asks for
//!   injection: an AdmissionReview in, the pod's sidecar as a JSON Patch out
//!   ([`super::inject`]). A pod whose annotations cannot be honoured is refused with the
//!   reason, never admitted without its sidecar;
//! * `/validate`, for every Istio resource written: refused, with the messages `weft analyze`
//!   prints, when it has an error, as istiod's validating webhook does.
//!
//! The API server trusts them through the `caBundle` of their webhook configurations, which
//! [`keep_ca_bundle`] keeps set to the mesh root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::inject::{Decision, Injector, decide};

/// The path the API server posts pods to.
pub const INJECT_PATH: &str = "/inject";
/// The path the API server posts Istio resources to.
pub const VALIDATE_PATH: &str = "/validate";
/// The largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the webhook needs: the injector and the namespaces' labels (watched; a namespace
/// not yet in the cache, just created, is read from the API server).
pub struct AdmissionWebhooks {
    injector: Injector,
    namespaces: Api<Namespace>,
    watched: Store<Namespace>,
}

impl AdmissionWebhooks {
    /// A webhook injecting with `injector`, with the namespaces `watched` and read with
    /// `client`.
    pub fn new(injector: Injector, client: kube::Client, watched: Store<Namespace>) -> Self {
        Self {
            injector,
            namespaces: Api::all(client),
            watched,
        }
    }

    /// A namespace's labels: from the cache unless `fresh`, else from the API server.
    async fn namespace_labels(
        &self,
        namespace: &str,
        fresh: bool,
    ) -> Result<Map<String, Value>, String> {
        let cached = (!fresh)
            .then(|| self.watched.get(&ObjectRef::new(namespace)))
            .flatten();
        let found = match cached {
            Some(found) => Some(found),
            None => self
                .namespaces
                .get_opt(namespace)
                .await
                .map_err(|error| format!("cannot read namespace {namespace}: {error}"))?
                .map(Arc::new),
        };
        Ok(found
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, Value::from(value)))
            .collect())
    }

    /// Serves the webhook on `listener` with `tls` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let webhook = self.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                else {
                    tracing::debug!(%peer, "webhook TLS handshake failed");
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let webhook = webhook.clone();
                    async move { Ok::<_, std::convert::Infallible>(webhook.handle(request, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    async fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        if ![INJECT_PATH, VALIDATE_PATH].contains(&path.as_str())
            || request.method() != hyper::Method::POST
        {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"error": "POST an AdmissionReview to /inject or /validate"}),
            );
        }
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "too large"})),
        };
        let Ok(review) = serde_json::from_slice::<Value>(&body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "not an AdmissionReview"}),
            );
        };
        let Some(uid) = review["request"]["uid"].as_str() else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "an AdmissionReview without request.uid"}),
            );
        };
        if path == VALIDATE_PATH {
            let response = match validate(&review["request"]) {
                Ok(()) => json!({"uid": uid, "allowed": true}),
                Err(message) => json!({
                    "uid": uid,
                    "allowed": false,
                    "status": {"code": 400, "message": message},
                }),
            };
            return reply(
                StatusCode::OK,
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
            );
        }
        let response = match self.review(&review["request"]).await {
            Ok(Some(patch)) => json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": STANDARD.encode(patch.to_string()),
            }),
            Ok(None) => json!({"uid": uid, "allowed": true}),
            Err(message) => {
                tracing::warn!(%peer, %message, "refused a pod at injection");
                json!({"uid": uid, "allowed": false, "status": {"code": 400, "message": message}})
            }
        };
        reply(
            StatusCode::OK,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        )
    }

    /// The JSON Patch for one admission request; `None` when the pod is not injected.
    async fn review(&self, request: &Value) -> Result<Option<Value>, String> {
        let mut pod = request["object"].clone();
        if request["kind"]["kind"] != "Pod" || !pod.is_object() {
            return Ok(None);
        }
        let namespace = request["namespace"]
            .as_str()
            .or_else(|| pod["metadata"]["namespace"].as_str())
            .unwrap_or("default")
            .to_string();
        let decide = |labels: &Map<String, Value>| {
            decide(
                &pod["metadata"],
                &pod["spec"],
                &namespace,
                Some(labels),
                &self.injector.control_namespace,
            )
        };
        // The cache may not have a label set a moment ago (`kubectl label namespace`, then
        // `kubectl apply`): a pod it would leave out is decided again on a fresh read.
        let mut decision = decide(&self.namespace_labels(&namespace, false).await?);
        if decision != Decision::Inject {
            decision = decide(&self.namespace_labels(&namespace, true).await?);
        }
        if let Decision::Skip(reason) = decision {
            tracing::debug!(namespace, reason, "not injected");
            return Ok(None);
        }
        self.injector.inject(&mut pod)?;
        Ok(Some(json!([
            {"op": "add", "path": "/metadata/labels", "value": pod["metadata"]["labels"]},
            {"op": "add", "path": "/metadata/annotations", "value": pod["metadata"]["annotations"]},
            {"op": "add", "path": "/spec", "value": pod["spec"]},
        ])))
    }
}

/// Checks an Istio resource being written as the config store will load it; the error
/// messages when it has errors. Kinds Weft does not read, and deletions, pass.
fn validate(request: &Value) -> Result<(), String> {
    if request["operation"] == "DELETE" {
        return Ok(());
    }
    let (group, kind) = (
        request["kind"]["group"].as_str().unwrap_or_default(),
        request["kind"]["kind"].as_str().unwrap_or_default(),
    );
    let Some(kind) = weft_api::Kind::ALL
        .iter()
        .find(|k| k.group() == group && k.as_str() == kind)
    else {
        return Ok(());
    };
    let object = &request["object"];
    let metadata = &object["metadata"];
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| metadata["namespace"].as_str())
        .unwrap_or("default");
    let document = json!({
        "apiVersion": object["apiVersion"],
        "kind": kind.as_str(),
        "metadata": {
            "name": metadata["name"],
            "namespace": namespace,
            "labels": metadata["labels"].as_object().cloned().unwrap_or_default(),
            "annotations": metadata["annotations"].as_object().cloned().unwrap_or_default(),
        },
        "spec": object.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    let mut loader = weft_api::load::Loader::new(weft_api::load::Limits::default());
    loader.load_str("admission", &document.to_string());
    let loaded = loader.finish();
    let errors: Vec<String> = weft_api::check(&loaded)
        .into_iter()
        .filter(|message| message.level() == weft_api::Level::Error)
        .map(|mut message| {
            message.origin = None;
            message.to_string()
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Keeps every webhook of the webhook configuration `name` (a MutatingWebhookConfiguration
/// or ValidatingWebhookConfiguration, as `kind` says) trusting `root_pem`, checking every
/// `every`; a missing configuration (installed without it) is logged once and looked for
/// again.
pub async fn keep_ca_bundle(
    client: kube::Client,
    kind: &'static str,
    name: String,
    root_pem: String,
    every: Duration,
) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
        &format!("{}s", kind.to_ascii_lowercase()),
    );
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let bundle = Value::from(STANDARD.encode(root_pem));
    let mut warned = false;
    loop {
        match api.get_opt(&name).await {
            Ok(Some(mut configuration)) => {
                let mut changed = false;
                if let Some(webhooks) = configuration.data["webhooks"].as_array_mut() {
                    for webhook in webhooks {
                        if webhook["clientConfig"]["caBundle"] != bundle {
                            webhook["clientConfig"]["caBundle"] = bundle.clone();
                            changed = true;
                        }
                    }
                }
                if changed {
                    match api
                        .replace(&name, &PostParams::default(), &configuration)
                        .await
                    {
                        Ok(_) => tracing::info!(kind, name, "set the webhook's caBundle"),
                        Err(error) => tracing::warn!(kind, name, %error, "cannot set the caBundle"),
                    }
                }
            }
            Ok(None) if !warned => {
                tracing::warn!(
                    kind,
                    name,
                    "no webhook configuration: its webhook is not called"
                );
                warned = true;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(kind, name, %error, "cannot read the webhook configuration")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Where and how the admission webhooks are served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The address to listen on (Istio's port is 15017, behind the Service's 443).
    pub addr: SocketAddr,
    /// The names its certificate is valid for (`weft-control.istio-system.svc`).
    pub names: Vec<String>,
    /// The MutatingWebhookConfiguration (injection) whose `caBundle` is kept set.
    pub mutating: String,
    /// The ValidatingWebhookConfiguration (Istio resources) whose `caBundle` is kept set.
    pub validating: String,
    /// What is injected.
    pub injector: Injector,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The port cannot be bound.
    #[error("cannot listen for the injection webhook on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The serving certificate cannot be made or used.
    #[error("the injection webhook's certificate: {0}")]
    Certificate(String),
}

/// Binds the webhook's port and starts serving it and keeping its `caBundle` current;
/// returns the tasks.
pub async fn start(
    config: &WebhookConfig,
    client: kube::Client,
    authority: &crate::ca::CertificateAuthority,
) -> Result<Vec<tokio::task::JoinHandle<()>>, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificate = |error: &dyn std::fmt::Display| WebhookError::Certificate(error.to_string());
    let (chain, key) = authority
        .serving_certificate(&config.names)
        .map_err(|e| certificate(&e))?;
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| certificate(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| certificate(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| certificate(&e))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: config.addr,
            source,
        })?;
    tracing::info!("serving the admission webhooks on {}", config.addr);
    let mut tasks = Vec::new();
    let unused = Arc::new(tokio::sync::Notify::new());
    let namespaces = super::registry::cache(Api::all(client.clone()), &unused, &mut tasks);
    let webhook = Arc::new(AdmissionWebhooks::new(
        config.injector.clone(),
        client.clone(),
        namespaces,
    ));
    tasks.extend([
        tokio::spawn(webhook.serve(listener, Arc::new(tls))),
        tokio::spawn(keep_ca_bundle(
            client.clone(),
            "MutatingWebhookConfiguration",
            config.mutating.clone(),
            authority.root_pem().to_string(),
            Duration::from_secs(30),
        )),
        tokio::spawn(keep_ca_bundle(
            client,
            "ValidatingWebhookConfiguration",
            config.validating.clone(),
            authority.root_pem().to_string(),
            Duration::from_secs(30),
        )),
    ]);
    Ok(tasks)
}
