//! What every listener does with a connection, written once: accept until the drain
//! ([`accept_loop`]), tell TLS from plaintext by the first byte ([`first_byte`]), serve
//! HTTP/1.1 and HTTP/2 with the proxy's limits ([`serve_http`]), or hand the connection to
//! HTTP or TCP by what its port carries ([`serve_carried`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{Carries, Detected};
use crate::drain;
use crate::error::ConnectionError;
use crate::http::{Body, respond};
use crate::http::framing::{FramingGuard, MAX_HEAD, MAX_HEADERS};

/// A connection's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// How long a client may take to send its first byte or finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until the drain starts, each served by `serve` on a
/// task of its own, with a drain watch it holds while it is open. A failed accept (out of
/// file descriptors) waits 50 ms before the next.
pub async fn accept_loop<S, F>(listener: TcpListener, mut drain: drain::Watch, serve: S)
where
    S: Fn(TcpStream, SocketAddr, drain::Watch) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peer, drain.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The first byte a client sends, without taking it from the stream; `None` when it closes
/// first. `0x16` starts a TLS handshake record.
pub async fn first_byte(stream: &TcpStream) -> Result<Option<u8>, ConnectionError> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| ConnectionError::Silent)?
        .map_err(ConnectionError::Io)?;
    Ok((peeked > 0).then_some(first[0]))
}

/// Whether a first byte starts a TLS handshake.
pub fn is_tls(first: u8) -> bool {
    first == 0x16
}

/// Serves HTTP/1.1 and HTTP/2 on `io` until the client closes or the drain ends the
/// connection, each request answered by `handle` — except an HTTP/2 request whose `host`
/// names another authority than its `:authority` (RFC 9113, section 8.3.1: malformed), which
/// gets 400: routing, policies and the application must all read the same one.
pub async fn serve_http<T, H, F>(
    io: T,
    drain: drain::Watch,
    handle: H,
) -> Result<(), ConnectionError>
where
    T: Io,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = (!conflicting_authority(&request)).then(|| handle(request));
        async move {
            Ok::<_, std::convert::Infallible>(match response {
                Some(response) => response.await,
                None => respond(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"host and :authority disagree\n"),
                ),
            })
        }
    });
    drain
        .serve(
            http_server()
                .serve_connection_with_upgrades(TokioIo::new(FramingGuard::new(io)), service),
        )
        .await
        .map_err(ConnectionError::Http)
}

/// Whether an HTTP/2 request carries a `host` header that disagrees with its `:authority`.
fn conflicting_authority<B>(request: &Request<B>) -> bool {
    if request.version() != hyper::Version::HTTP_2 {
        return false;
    }
    match (request.uri().authority(), request.headers().get(hyper::header::HOST)) {
        (Some(authority), Some(host)) => !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes()),
        _ => false,
    }
}

/// How the proxy serves HTTP/1.1 and HTTP/2 to its clients, with the limits that keep a bad
/// client from costing it memory or connections: request heads of at most 64 KiB and 100
/// headers (431 beyond), 10 s to send them.
fn http_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32);
    builder
}

/// What serves a connection once it is known whether it carries HTTP or opaque TCP.
pub trait Carrier {
    /// Serves it as HTTP.
    fn http<T: Io>(self, io: T) -> impl Future<Output = Result<(), ConnectionError>> + Send;
    /// Serves it as opaque TCP.
    fn tcp<T: Io>(self, io: T) -> impl Future<Output = Result<(), ConnectionError>> + Send;
}

/// Serves a connection as what its port `carries`; on a port of undeclared protocol, as
/// what its first bytes say ([`crate::detect`]).
pub async fn serve_carried<T: Io>(
    io: T,
    carries: Carries,
    carrier: impl Carrier,
) -> Result<(), ConnectionError> {
    match carries {
        Carries::Http => carrier.http(io).await,
        Carries::Tcp => carrier.tcp(io).await,
        Carries::Detect => match crate::detect::detect(io)
            .await
            .map_err(ConnectionError::Io)?
        {
            (Detected::Http, io) => carrier.http(io).await,
            (Detected::Opaque, io) => carrier.tcp(io).await,
        },
    }
}
