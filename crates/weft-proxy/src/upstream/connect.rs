//! Connections to an upstream endpoint: TCP, then TLS when the cluster asks for it (mesh
//! mTLS with the workload's certificate, or origination with a DestinationRule's files),
//! then the HTTP/1.1 or HTTP/2 handshake; and the shape a request takes for each HTTP
//! version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::ConnectError;
use crate::http::Body;
use crate::http::headers::ORIGINAL_PROTOCOL;
use crate::model::UpstreamTls;
use crate::tls;
use crate::tls::identity::CurrentIdentity;

/// A byte stream to an upstream: TCP, or TLS over TCP.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// What to offer in ALPN: the protocol the cluster speaks (between sidecars, HTTP/2 only
/// with `h2UpgradePolicy: UPGRADE`, an `HTTP2`/`GRPC` port, or `useClientProtocol` with an
/// HTTP/2 client, as in Istio).
pub(super) fn alpn(http2: bool) -> &'static [&'static [u8]] {
    if http2 { &[b"h2"] } else { &[b"http/1.1"] }
}

/// A connection to `address`, over TLS offering `alpn` when `tls` is given; says whether
/// the peer chose HTTP/2.
pub(super) async fn connect(
    identity: &CurrentIdentity,
    address: SocketAddr,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
    alpn: &[&[u8]],
) -> Result<(Box<dyn Stream>, bool), ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(address.to_string()))?
        .map_err(|error| ConnectError::Io {
            target: address.to_string(),
            error,
        })?;
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
            if identity.get().is_none() {
                identity.wait().await;
            }
            tls::client_config(identity, tls.identities.clone(), alpn)
                .map_err(|e| ConnectError::TlsSetup(format!("TLS setup: {e}")))?
        }
    };
    let sni = if tls.sni.is_empty() {
        "mesh.weft"
    } else {
        &tls.sni
    };
    let name = ServerName::try_from(sni)
        .map_err(|e| ConnectError::TlsSetup(format!("SNI {sni:?}: {e}")))?
        .to_owned();
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| ConnectError::TlsTimeout(address))?
    .map_err(|error| ConnectError::Tls { address, error })?;
    let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((Box::new(stream), negotiated_h2))
}

/// The HTTP/1.1 handshake on a new connection; the connection runs on its own task (and
/// may switch protocols after an upgrade).
pub(super) async fn http1_over(
    stream: Box<dyn Stream>,
) -> Result<http1::SendRequest<Body>, ConnectError> {
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| ConnectError::Handshake {
            protocol: "HTTP/1.1",
            error,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}

/// The HTTP/2 handshake on a new connection; the connection runs on its own task.
pub(super) async fn http2_over(
    stream: Box<dyn Stream>,
) -> Result<http2::SendRequest<Body>, ConnectError> {
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|error| ConnectError::Handshake {
            protocol: "HTTP/2",
            error,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// Shapes a request for HTTP/2: scheme and authority in the request line, and the original
/// protocol noted when the request was HTTP/1.1.
pub(super) fn for_http2(request: &mut Request<Body>) {
    if request.uri().scheme().is_none() {
        let authority = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            *request.uri_mut() = uri;
        }
    }
    if request.version() != Version::HTTP_2 {
        request.headers_mut().insert(
            ORIGINAL_PROTOCOL.clone(),
            HeaderValue::from_static("HTTP/1.1"),
        );
        *request.version_mut() = Version::HTTP_2;
    }
}

/// Shapes a request for HTTP/1.1 to an origin: the path only, the authority in Host.
pub(super) fn for_http1(request: &mut Request<Body>) {
    *request.version_mut() = Version::HTTP_11;
    if request.uri().scheme().is_some() {
        if let Some(authority) = request.uri().authority().cloned()
            && !request.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = Uri::from(path);
        }
    }
}
