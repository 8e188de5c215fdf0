//! The key sets that RequestAuthentications name by `jwksUri`, fetched by the control plane
//! and pushed to proxies inline, as istiod does: proxies never reach out to an issuer. A
//! set is fetched when a resource first names it and again every refresh interval; a set
//! that changes starts a push. A fetch that fails keeps the last good set; a set never
//! fetched is pushed as empty, so its issuer's tokens fail rather than pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use tokio::net::TcpStream;
use tokio::sync::watch;
use weft_api::resource::Spec;

use crate::store::ConfigState;

/// Key sets by URI, as fetched.
pub type KeySets = BTreeMap<String, String>;

/// How long a fetch may take when the rule names no `timeout` (Istio's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a key set may weigh.
const MAX_SIZE: usize = 1 << 20;

/// How soon a set that was never fetched is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Starts fetching the key sets the configuration names, every `refresh`; the receiver
/// sees each new collection.
pub fn start(
    mut state: watch::Receiver<Arc<ConfigState>>,
    refresh: Duration,
) -> (watch::Receiver<Arc<KeySets>>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = watch::channel(Arc::new(KeySets::new()));
    let task = tokio::spawn(async move {
        let mut sets = KeySets::new();
        let mut fetched_at: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        loop {
            let wanted = uris(&state.borrow_and_update());
            let now = tokio::time::Instant::now();
            let mut changed = false;
            for (uri, timeout) in &wanted {
                let due = fetched_at
                    .get(uri)
                    .is_none_or(|at| now.duration_since(*at) >= refresh);
                if !due {
                    continue;
                }
                match fetch(uri, *timeout).await {
                    Ok(set) => {
                        fetched_at.insert(uri.clone(), now);
                        if sets.get(uri) != Some(&set) {
                            tracing::info!(%uri, "fetched a new JWKS");
                            sets.insert(uri.clone(), set);
                            changed = true;
                        }
                    }
                    Err(error) => tracing::warn!(%uri, %error, "cannot fetch the JWKS"),
                }
            }
            let before = sets.len();
            sets.retain(|uri, _| wanted.contains_key(uri));
            fetched_at.retain(|uri, _| wanted.contains_key(uri));
            changed |= sets.len() != before;
            if changed && sender.send(Arc::new(sets.clone())).is_err() {
                return;
            }
            let missing = wanted.keys().any(|uri| !fetched_at.contains_key(uri));
            let wait = if missing { RETRY.min(refresh) } else { refresh };
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
    (receiver, task)
}

/// The `jwksUri`s of the configuration, each with its fetch timeout.
fn uris(state: &ConfigState) -> BTreeMap<String, Duration> {
    let mut uris = BTreeMap::new();
    for resource in state.resources.values() {
        let Spec::RequestAuthentication(ra) = &resource.spec else {
            continue;
        };
        for rule in &ra.jwt_rules {
            if let Some(uri) = &rule.jwks_uri {
                let timeout = rule
                    .timeout
                    .as_ref()
                    .map(weft_api::Duration::get)
                    .filter(|t| !t.is_zero())
                    .unwrap_or(DEFAULT_TIMEOUT);
                uris.insert(uri.clone(), timeout);
            }
        }
    }
    uris
}

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("bad URI: {0}")]
    Uri(String),
    #[error("timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(hyper::StatusCode),
    #[error("the body is over {MAX_SIZE} bytes or broke off")]
    Body,
    #[error("not a JSON Web Key Set")]
    NotKeySet,
}

/// One GET of `uri`, over TLS (verified against the system's roots) for `https`.
async fn fetch(uri: &str, timeout: Duration) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, get(uri))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn get(uri: &str) -> Result<String, FetchError> {
    let parsed: Uri = uri.parse().map_err(|_| FetchError::Uri(uri.to_string()))?;
    let host = parsed
        .host()
        .ok_or_else(|| FetchError::Uri(uri.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Uri(uri.to_string())),
    };
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let request = hyper::Request::get(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            parsed.authority().map_or("", |a| a.as_str()),
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::Uri(uri.to_string()))?;
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| FetchError::Uri(uri.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(system_roots_client()?)
            .connect(name, tcp)
            .await?;
        send(tls, request).await?
    } else {
        send(tcp, request).await?
    };
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_SIZE)
        .collect()
        .await
        .map_err(|_| FetchError::Body)?
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).map_err(|_| FetchError::NotKeySet)?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| FetchError::NotKeySet)?;
    if !parsed.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err(FetchError::NotKeySet);
    }
    Ok(text)
}

async fn send<T>(
    io: T,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// A TLS client trusting the system's root certificates.
fn system_roots_client() -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        // A certificate of the system's store that rustls cannot use is left out.
        let _ = roots.add(certificate);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FetchError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
