//! Upstream connections, pooled per endpoint: [`Pool::send`] sends a request to an
//! endpoint of a cluster over TCP, then mesh mTLS when the endpoint is a mesh workload,
//! then HTTP/1.1 or HTTP/2 ([`connect`]). The cluster's protocol decides, offered to a peer
//! sidecar in ALPN: with `h2UpgradePolicy: UPGRADE`, HTTP/1.1 requests from applications
//! share multiplexed HTTP/2 connections between sidecars, and the original protocol travels
//! in [`crate::http::headers::ORIGINAL_PROTOCOL`] so the receiving sidecar restores it.
//! Requests without a body to HTTP/1.1 upstreams go by the lean client ([`h1`]).
//!
//! Which endpoint, and whether the cluster takes one more request, is [`balance`]'s.

pub mod balance;
pub mod connect;
pub mod h1;
pub mod hash;

use foldhash::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use tokio_util::either::Either;

pub use connect::Stream;

use crate::error::{ConnectError, UpstreamError};
use crate::http::{Body, boxed};
use crate::model::UpstreamTls;
use crate::tls::identity::CurrentIdentity;
use connect::{alpn, for_http1, for_http2};

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
pub struct Pool {
    identity: CurrentIdentity,
    /// For requests without a body.
    lean_idle: LeanPool,
    /// hyper's, for requests with a body.
    http1_idle: Arc<Mutex<HashMap<PoolKey, Vec<http1::SendRequest<Body>>>>>,
    http2: Arc<Mutex<HashMap<PoolKey, http2::SendRequest<Body>>>>,
}

impl Pool {
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
                None => Box::pin(self.connect(&key, tls, connect_timeout))
                    .await
                    .map_err(UpstreamError::Connect)?,
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
                None => (
                    self.connect_lean(key, tls, connect_timeout)
                        .await
                        .map_err(UpstreamError::Connect)?,
                    false,
                ),
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
    ) -> Pin<Box<dyn Future<Output = Result<h1::Connection, ConnectError>> + Send + 'a>> {
        Box::pin(async move {
            let (stream, _) =
                connect::connect(&self.identity, key.address, tls, timeout, alpn(false)).await?;
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
    ) -> Result<Sender, ConnectError> {
        let (stream, negotiated_h2) =
            connect::connect(&self.identity, key.address, tls, timeout, alpn(key.http2)).await?;
        // Over TLS, what the peer agreed to; in plaintext, the cluster's protocol options.
        let http2 = if tls.is_some() {
            negotiated_h2
        } else {
            key.http2
        };
        if http2 {
            let sender = connect::http2_over(stream).await?;
            self.http2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*key, sender.clone());
            Ok(Sender::Http2(sender))
        } else {
            connect::http1_over(stream).await.map(Sender::Http1)
        }
    }

    /// A raw connection to `address`, over mesh mTLS when `tls` is given, for opaque TCP.
    pub async fn connect_stream(
        &self,
        address: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<Box<dyn Stream>, UpstreamError> {
        connect::connect(&self.identity, address, tls, timeout, &[])
            .await
            .map(|(stream, _)| stream)
            .map_err(UpstreamError::Connect)
    }

    /// Sends an upgrade request (WebSocket) on an HTTP/1.1 connection of its own, so the
    /// connection can switch protocols after `101`. Returns the response and, for a `101`,
    /// the upstream's side of the switched connection, for the caller to splice.
    pub async fn send_upgrade(
        &self,
        address: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
        mut request: Request<Body>,
    ) -> Result<(Response<Body>, Option<OnUpgrade>), UpstreamError> {
        let (stream, _) = connect::connect(&self.identity, address, tls, timeout, &[b"http/1.1"])
            .await
            .map_err(UpstreamError::Connect)?;
        let mut sender = connect::http1_over(stream)
            .await
            .map_err(UpstreamError::Connect)?;
        for_http1(&mut request);
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::Reset(Box::new(e)))?;
        let upgraded = (response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut response));
        Ok((response.map(boxed), upgraded))
    }
}

/// Notes an idle connection found closed when it was about to be used.
fn stale_connection(error: &std::io::Error) {
    tracing::debug!(%error, "an idle upstream connection had closed; trying another");
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use hyper::body::Bytes;

    /// Every request's future holds a `send` future and is moved whole at least once; the
    /// rare connect path is boxed so that it stays small, on the lean path (a request
    /// without a body) and on hyper's (one with a body).
    #[test]
    fn a_send_future_is_small() {
        let pool = Pool::new(CurrentIdentity::default());
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
            let sending = pool.send(
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
