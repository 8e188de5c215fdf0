//! Connections to upstreams: TCP, then mesh mTLS when the endpoint is a mesh workload, then
//! HTTP/1.1 or HTTP/2, pooled per endpoint. The cluster's protocol decides, offered to a peer
//! sidecar in ALPN: with `h2UpgradePolicy: UPGRADE`, HTTP/1.1 requests from applications
//! share multiplexed HTTP/2 connections between sidecars, and the original protocol travels
//! in [`ORIGINAL_PROTOCOL`] so the receiving sidecar restores it.

use foldhash::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderName;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::h1;
use crate::identity::CurrentIdentity;
use crate::model::UpstreamTls;
use crate::tls;

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body broke off. (A type of its own rather than [`BoxError`]: hyper's server takes
/// any error that converts into a `BoxError`, and the compiler cannot prove that of a boxed
/// trait object inside the proxy's futures.)
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BodyError(#[from] pub BoxError);

/// The body every proxied message is converted to.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body hyper received, as a [`Body`].
pub fn boxed(body: Incoming) -> Body {
    body.map_err(|error| BodyError(Box::new(error))).boxed()
}

/// Shapes a request for HTTP/2: scheme and authority in the request line, and the original
/// protocol noted when the request was HTTP/1.1.
fn for_http2(request: &mut Request<Body>) {
    if request.uri().scheme().is_none() {
        let authority = request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let Ok(uri) = hyper::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            *request.uri_mut() = uri;
        }
    }
    if request.version() != hyper::Version::HTTP_2 {
        request.headers_mut().insert(
            ORIGINAL_PROTOCOL.clone(),
            hyper::header::HeaderValue::from_static("HTTP/1.1"),
        );
        *request.version_mut() = hyper::Version::HTTP_2;
    }
}

/// Shapes a request for HTTP/1.1 to an origin: the path only, the authority in Host.
fn for_http1(request: &mut Request<Body>) {
    *request.version_mut() = hyper::Version::HTTP_11;
    if request.uri().scheme().is_some() {
        if let Some(authority) = request.uri().authority().cloned()
            && !request.headers().contains_key(hyper::header::HOST)
            && let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(hyper::header::HOST, host);
        }
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = hyper::Uri::from(path);
        }
    }
}

/// What to offer in ALPN: the protocol the cluster speaks (between sidecars, HTTP/2 only
/// with `h2UpgradePolicy: UPGRADE`, an `HTTP2`/`GRPC` port, or `useClientProtocol` with an
/// HTTP/2 client, as in Istio).
fn alpn(http2: bool) -> &'static [&'static [u8]] {
    if http2 { &[b"h2"] } else { &[b"http/1.1"] }
}

/// A byte stream to an upstream: TCP, or TLS over TCP.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Header that carries an HTTP/1.1 request's protocol across an HTTP/2 hop between sidecars.
pub static ORIGINAL_PROTOCOL: HeaderName = HeaderName::from_static("weft-orig-proto");

/// Why a request did not reach the upstream, with Envoy's response flag.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connection failed (`UF`).
    #[error("upstream connect error: {0}")]
    Connect(String),
    /// The connection broke or was reset before a response (`UR`).
    #[error("upstream reset: {0}")]
    Reset(BoxError),
}

impl UpstreamError {
    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Connect(_) => "UF",
            Self::Reset(_) => "UR",
        }
    }
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    address: SocketAddr,
    /// [`UpstreamTls::fingerprint`].
    tls: Option<u64>,
    http2: bool,
}

/// How many idle HTTP/1.1 connections to keep per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 32;

/// Idle HTTP/1.1 connections of the lean client ([`h1`]), per endpoint.
type LeanPool = Arc<Mutex<HashMap<PoolKey, Vec<h1::Connection>>>>;

/// The pool of upstream connections and the TLS settings they use.
#[derive(Clone)]
pub struct Upstreams {
    identity: CurrentIdentity,
    /// For requests without a body.
    lean_idle: LeanPool,
    /// hyper's, for requests with a body.
    http1_idle: Arc<Mutex<HashMap<PoolKey, Vec<http1::SendRequest<Body>>>>>,
    http2: Arc<Mutex<HashMap<PoolKey, http2::SendRequest<Body>>>>,
}

impl Upstreams {
    /// A pool whose TLS uses the workload's `identity`.
    pub fn new(identity: CurrentIdentity) -> Self {
        Self {
            identity,
            lean_idle: Arc::default(),
            http1_idle: Arc::default(),
            http2: Arc::default(),
        }
    }

    /// Sends `request` to `address`, over mesh mTLS when `tls` is given, in HTTP/2 when
    /// `http2` (or when the peer sidecar agrees to it over TLS).
    ///
    /// A request without a body to an HTTP/1.1 upstream goes by the lean client ([`h1`]);
    /// the choice is made before either future exists, so the returned future is only as
    /// large as the path taken.
    pub fn send<'a>(
        &'a self,
        address: SocketAddr,
        tls: Option<&'a UpstreamTls>,
        http2: bool,
        connect_timeout: Duration,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a {
        let key = PoolKey {
            address,
            tls: tls.map(|t| t.fingerprint),
            http2,
        };
        if !http2 && hyper::body::Body::is_end_stream(request.body()) {
            for_http1(&mut request);
            Either::Left(self.send_lean(key, tls, connect_timeout, request))
        } else {
            Either::Right(self.send_hyper(key, tls, connect_timeout, request))
        }
    }

    /// Sends `request` with hyper's client.
    async fn send_hyper(
        &self,
        key: PoolKey,
        tls: Option<&UpstreamTls>,
        connect_timeout: Duration,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut pooled = self.pooled(&key);
        loop {
            let reused = pooled.is_some();
            let sender = match pooled.take() {
                Some(sender) => sender,
                // Boxed: connecting is rare, and its state (a TLS handshake) is large;
                // inline, every request's future would carry and copy it.
                None => Box::pin(self.connect(&key, tls, connect_timeout)).await?,
            };
            let result = match sender {
                Sender::Http2(mut sender) => {
                    for_http2(&mut request);
                    sender.try_send_request(request).await
                }
                Sender::Http1(mut sender) => {
                    for_http1(&mut request);
                    let result = sender.try_send_request(request).await;
                    if result.is_ok() {
                        self.release(key, sender);
                    }
                    result
                }
            };
            match result {
                Ok(response) => return Ok(response.map(boxed)),
                Err(mut error) => match error.take_message() {
                    // A pooled connection closed before the request went out: the request
                    // is untouched, so it goes again on a new connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Reset(Box::new(error.into_error()))),
                },
            }
        }
    }

    /// Sends a request without a body over HTTP/1.1 with the lean client, on an idle
    /// connection when there is one; a stale idle connection is passed over.
    async fn send_lean(
        &self,
        key: PoolKey,
        tls: Option<&UpstreamTls>,
        connect_timeout: Duration,
        request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        loop {
            let (connection, reused) = match self.lean_pooled(&key) {
                Some(connection) => (connection, true),
                None => (self.connect_lean(key, tls, connect_timeout).await?, false),
            };
            let pool = self.lean_idle.clone();
            let release: h1::Release = Box::new(move |connection| {
                let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
                let connections = idle.entry(key).or_default();
                if connections.len() < MAX_IDLE_PER_ENDPOINT {
                    connections.push(connection);
                }
            });
            match connection.send(&request, reused, release).await {
                Ok(response) => return Ok(response.map(BodyExt::boxed)),
                Err(h1::SendError::Stale(error)) if reused => stale_connection(&error),
                Err(h1::SendError::Stale(error)) => {
                    return Err(UpstreamError::Reset(Box::new(error)));
                }
                Err(h1::SendError::Failed(error)) => return Err(UpstreamError::Reset(error)),
            }
        }
    }

    /// A new connection for the lean client; boxed, as in `send_hyper`: connecting is rare
    /// and its state (a TLS handshake) large.
    fn connect_lean<'a>(
        &'a self,
        key: PoolKey,
        tls: Option<&'a UpstreamTls>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<h1::Connection, UpstreamError>> + Send + 'a>> {
        Box::pin(async move {
            let (stream, _) = self
                .connect_stream_with(key.address, tls, timeout, alpn(false))
                .await?;
            Ok(h1::Connection::new(stream))
        })
    }

    /// An idle lean connection to `key` that still looks usable; the others are closed.
    fn lean_pooled(&self, key: &PoolKey) -> Option<h1::Connection> {
        let mut idle = self.lean_idle.lock().unwrap_or_else(|p| p.into_inner());
        let connections = idle.get_mut(key)?;
        while let Some(mut connection) = connections.pop() {
            if connection.is_usable() {
                return Some(connection);
            }
        }
        None
    }

    fn pooled(&self, key: &PoolKey) -> Option<Sender> {
        if let Some(sender) = self
            .http2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|s| !s.is_closed())
        {
            return Some(Sender::Http2(sender.clone()));
        }
        let mut idle = self.http1_idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.get_mut(key)?;
        while let Some(sender) = senders.pop() {
            if sender.is_ready() {
                return Some(Sender::Http1(sender));
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection to the pool; it is reused once its response is read.
    fn release(&self, key: PoolKey, sender: http1::SendRequest<Body>) {
        let mut idle = self.http1_idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.entry(key).or_default();
        senders.retain(|s| !s.is_closed());
        if senders.len() < MAX_IDLE_PER_ENDPOINT {
            senders.push(sender);
        }
    }

    async fn connect(
        &self,
        key: &PoolKey,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<Sender, UpstreamError> {
        let (stream, negotiated_h2) = self
            .connect_stream_with(key.address, tls, timeout, alpn(key.http2))
            .await?;
        // Over TLS, what the peer agreed to; in plaintext, the cluster's protocol options.
        let http2 = if tls.is_some() {
            negotiated_h2
        } else {
            key.http2
        };
        if http2 {
            self.http2_over(TokioIo::new(stream), key).await
        } else {
            http1_over(TokioIo::new(stream)).await
        }
    }

    /// A raw connection to `address`, over mesh mTLS when `tls` is given, for opaque TCP.
    pub async fn connect_stream(
        &self,
        address: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<Box<dyn Stream>, UpstreamError> {
        Ok(self
            .connect_stream_with(address, tls, timeout, &[])
            .await?
            .0)
    }

    /// Sends an upgrade request (WebSocket) on an HTTP/1.1 connection of its own, so the
    /// connection can switch protocols after `101`; then the bytes flow between it and
    /// `downstream`.
    pub async fn send_upgrade(
        &self,
        address: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
        mut request: Request<Body>,
        downstream: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (stream, _) = self
            .connect_stream_with(address, tls, timeout, &[b"http/1.1"])
            .await?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        for_http1(&mut request);
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::Reset(Box::new(e)))?;
        crate::outbound::splice_upgrade(downstream, &mut response);
        Ok(response.map(boxed))
    }

    /// A connection to `address`, over mesh mTLS offering `alpn` when `tls` is given; says
    /// whether the peer chose HTTP/2.
    async fn connect_stream_with(
        &self,
        address: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
        alpn: &[&[u8]],
    ) -> Result<(Box<dyn Stream>, bool), UpstreamError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| UpstreamError::Connect(format!("timed out connecting to {address}")))?
            .map_err(|e| UpstreamError::Connect(format!("{address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok((Box::new(tcp), false));
        };
        let config = match &tls.origination {
            Some(origination) => {
                let mut config = rustls::ClientConfig::clone(origination);
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                Arc::new(config)
            }
            None => {
                if self.identity.get().is_none() {
                    self.identity.wait().await;
                }
                tls::client_config(&self.identity, tls.identities.clone(), alpn)
                    .map_err(|e| UpstreamError::Connect(format!("TLS setup: {e}")))?
            }
        };
        let sni = if tls.sni.is_empty() {
            "mesh.weft"
        } else {
            &tls.sni
        };
        let name = ServerName::try_from(sni)
            .map_err(|e| UpstreamError::Connect(format!("SNI {sni:?}: {e}")))?
            .to_owned();
        let stream = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| UpstreamError::Connect(format!("TLS handshake with {address} timed out")))?
        .map_err(|e| UpstreamError::Connect(format!("TLS handshake with {address}: {e}")))?;
        let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Box::new(stream), negotiated_h2))
    }

    async fn http2_over<T>(&self, io: TokioIo<T>, key: &PoolKey) -> Result<Sender, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        self.http2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*key, sender.clone());
        Ok(Sender::Http2(sender))
    }
}

async fn http1_over<T>(io: TokioIo<T>) -> Result<Sender, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(format!("HTTP/1.1 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Sender::Http1(sender))
}

/// Notes an idle connection found closed when it was about to be used.
fn stale_connection(error: &std::io::Error) {
    tracing::debug!(%error, "an idle upstream connection had closed; trying another");
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// Every request's future holds a `send` future and is moved whole at least once; the
    /// rare connect path is boxed so that it stays small, on the lean path (a request
    /// without a body) and on hyper's (one with a body).
    #[test]
    fn a_send_future_is_small() {
        let upstreams = Upstreams::new(CurrentIdentity::default());
        let empty = Request::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let full = Request::new(
            http_body_util::Full::new(Bytes::from_static(b"body"))
                .map_err(|never| match never {})
                .boxed(),
        );
        for request in [empty, full] {
            let sending = upstreams.send(
                SocketAddr::from(([127, 0, 0, 1], 1)),
                None,
                false,
                Duration::from_secs(1),
                request,
            );
            let size = std::mem::size_of_val(&sending);
            assert!(size <= 1200, "the send future takes {size} bytes");
        }
    }
}
