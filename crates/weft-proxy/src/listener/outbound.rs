//! The outbound listeners: requests from the application to the mesh.
//!
//! * The outbound port is an explicit HTTP proxy (the application sets `HTTP_PROXY`): each
//!   request names its destination in its absolute URI or its Host.
//! * Connections that iptables or nftables redirected to the same port (transparent
//!   interception) are served as what the mesh says the port the application dialled
//!   carries: HTTP, each request routed by its Host on that port and sent on to where the
//!   application was going when no route matches (Istio's passthrough); opaque TCP straight
//!   to that destination otherwise.
//! * A per-upstream local port leads to one `host:port`: its HTTP requests are routed as if
//!   they named it, its opaque TCP goes to an endpoint of the service.
//!
//! They are for the application beside the proxy only, so they listen on loopback whatever
//! the bind address ([`crate::app`]). Requests are handled by [`crate::proxy::Proxy`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::http::uri::Authority;
use tokio::net::{TcpListener, TcpStream};

use super::orig_dst;
use super::serve::{Carrier, Io, accept_loop, serve_carried, serve_http};
use crate::detect::Carries;
use crate::drain;
use crate::error::{ConnectError, ConnectionError};
use crate::http::headers::address_to;
use crate::proxy::{Proxy, Redirected};
use crate::xds::Applied;

/// How long a passthrough connection may take to connect.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the outbound port until the drain: the explicit proxy, and the connections
/// redirected to it.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, drain: drain::Watch) {
    accept_loop(listener, drain, move |stream, peer, drain| {
        let proxy = proxy.clone();
        async move {
            let served = match orig_dst::original_destination(&stream) {
                Some(original) => serve_redirected(proxy, stream, peer, original, drain).await,
                None => serve_explicit(proxy, stream, peer, drain).await,
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "outbound connection ended");
            }
        }
    })
    .await;
}

/// The explicit proxy: each request names where it goes.
async fn serve_explicit(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: drain::Watch,
) -> Result<(), ConnectionError> {
    Applied::wait_warm(&mut proxy.config.clone()).await;
    serve_http(stream, drain, move |request| {
        let proxy = proxy.clone();
        async move { proxy.handle(request, Some(peer.ip())).await }
    })
    .await
}

/// A connection redirected to the outbound port on its way to `original`; see the module
/// documentation.
async fn serve_redirected(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    drain: drain::Watch,
) -> Result<(), ConnectionError> {
    Applied::wait_warm(&mut proxy.config.clone()).await;
    let carries = carries(&proxy, original.port());
    let connection = RedirectedConnection {
        proxy,
        peer,
        original,
        drain,
    };
    serve_carried(stream, carries, connection).await
}

/// What connections to an outbound `port` carry, from the configuration.
fn carries(proxy: &Proxy, port: u16) -> Carries {
    let config = proxy.config.borrow();
    if config.model.route_table(port).is_none() {
        Carries::Tcp
    } else if config.model.sniffed_ports.contains(&port) {
        Carries::Detect
    } else {
        Carries::Http
    }
}

struct RedirectedConnection {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    original: SocketAddr,
    drain: drain::Watch,
}

impl Carrier for RedirectedConnection {
    /// Each request is routed as the name the application used (its Host), on the port it
    /// dialled.
    async fn http<T: Io>(self, io: T) -> Result<(), ConnectionError> {
        let Self {
            proxy,
            peer,
            original,
            drain,
        } = self;
        serve_http(io, drain, move |mut request: Request<Incoming>| {
            let proxy = proxy.clone();
            let host = request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
                .map_or_else(|| original.ip().to_string(), |a| a.host().to_string());
            if let Ok(authority) = format!("{host}:{}", original.port()).parse() {
                address_to(&mut request, authority);
            }
            request.extensions_mut().insert(Redirected(original));
            async move { proxy.handle(request, Some(peer.ip())).await }
        })
        .await
    }

    /// Opaque TCP to where the connection was going (Istio's `PassthroughCluster`).
    async fn tcp<T: Io>(self, mut io: T) -> Result<(), ConnectionError> {
        let _open = self.drain;
        let target = self.original.to_string();
        let mut upstream = tokio::time::timeout(
            PASSTHROUGH_CONNECT_TIMEOUT,
            TcpStream::connect(self.original),
        )
        .await
        .map_err(|_| ConnectError::Timeout(target.clone()))?
        .map_err(|error| ConnectError::Io { target, error })?;
        let _ = upstream.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut io, &mut upstream)
            .await
            .map_err(ConnectionError::Io)?;
        Ok(())
    }
}

/// Serves a per-upstream local port until the drain: everything that arrives goes to
/// `host:port`. HTTP when the mesh routes HTTP on that port (each request is routed as if
/// it named `host:port`), opaque TCP otherwise, and on a port of undeclared protocol
/// whatever each connection's first bytes say.
pub async fn serve_upstream_port(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    drain: drain::Watch,
    host: String,
    port: u16,
) {
    let host: Arc<str> = host.into();
    accept_loop(listener, drain, move |stream, peer, drain| {
        let proxy = proxy.clone();
        let host = host.clone();
        async move {
            Applied::wait_warm(&mut proxy.config.clone()).await;
            let carries = carries(&proxy, port);
            let connection = UpstreamConnection {
                proxy,
                peer,
                host,
                port,
                drain,
            };
            if let Err(error) = serve_carried(stream, carries, connection).await {
                tracing::debug!(%peer, %error, "per-upstream connection ended");
            }
        }
    })
    .await;
}

struct UpstreamConnection {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    host: Arc<str>,
    port: u16,
    drain: drain::Watch,
}

impl Carrier for UpstreamConnection {
    /// Every request is routed as if it named `host:port`.
    async fn http<T: Io>(self, io: T) -> Result<(), ConnectionError> {
        let named = format!("{}:{}", self.host, self.port);
        let (Ok(authority), Ok(host)) = (named.parse::<Authority>(), HeaderValue::from_str(&named))
        else {
            return Err(ConnectionError::BadUpstream(named));
        };
        let (proxy, peer) = (self.proxy, self.peer);
        serve_http(io, self.drain, move |mut request: Request<Incoming>| {
            address_to(&mut request, authority.clone());
            request.headers_mut().insert(HOST, host.clone());
            let proxy = proxy.clone();
            async move { proxy.handle(request, Some(peer.ip())).await }
        })
        .await
    }

    /// Opaque TCP to an endpoint of the service.
    async fn tcp<T: Io>(self, mut io: T) -> Result<(), ConnectionError> {
        let _open = self.drain;
        let mut upstream = self.proxy.connect_to(&self.host, self.port).await?;
        tokio::io::copy_bidirectional(&mut io, &mut upstream)
            .await
            .map_err(ConnectionError::Io)?;
        Ok(())
    }
}
