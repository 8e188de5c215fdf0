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
use crate::http::framing::{FramingGuard, MAX_HEAD, MAX_HEADERS};
use crate::http::{Body, respond};

/// A connection's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// How long a client may take to send its first byte or finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What bounds every listener's connections, set once when the proxy starts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections one listener serves at once; more are closed as they arrive.
    pub max_per_listener: usize,
    /// How long an HTTP connection may carry nothing (Envoy's `idle_timeout`).
    pub idle_timeout: Duration,
    /// How long a request or response body may send nothing while it is read (Envoy's
    /// `stream_idle_timeout`).
    pub stream_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_per_listener: 16_384,
            idle_timeout: Duration::from_secs(3600),
            stream_idle_timeout: Duration::from_secs(300),
        }
    }
}

static LIMITS: std::sync::OnceLock<ConnectionLimits> = std::sync::OnceLock::new();

/// Sets the limits of this process's listeners; the first call wins.
pub fn set_limits(limits: ConnectionLimits) {
    let _ = LIMITS.set(limits);
}

fn limits() -> ConnectionLimits {
    *LIMITS.get_or_init(ConnectionLimits::default)
}

/// Accepts connections on `listener` until the drain starts, each served by `serve` on a
/// task of its own, with a drain watch it holds while it is open. Past the listener's
/// connection limit a new connection is closed at once; a failed accept (out of file
/// descriptors) waits 50 ms before the next.
pub async fn accept_loop<S, F>(listener: TcpListener, mut drain: drain::Watch, serve: S)
where
    S: Fn(TcpStream, SocketAddr, drain::Watch) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits().max_per_listener));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "connection refused: the listener is at its limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let serving = serve(stream, peer, drain.clone());
                tokio::spawn(async move {
                    serving.await;
                    drop(permit);
                });
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
    let (io, activity) = Idle::new(io);
    let server = http_server();
    let serving = drain
        .serve(server.serve_connection_with_upgrades(TokioIo::new(FramingGuard::new(io)), service));
    tokio::select! {
        served = serving => served.map_err(ConnectionError::Http),
        () = activity.expired(limits().idle_timeout) => Err(ConnectionError::Idle),
    }
}

/// A byte stream that notes when bytes last crossed it, for the idle timeout.
struct Idle<T> {
    inner: T,
    activity: Activity,
}

/// When bytes last crossed a connection, in milliseconds after its start.
#[derive(Clone)]
struct Activity {
    start: tokio::time::Instant,
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns once nothing has crossed for `timeout`.
    async fn expired(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl<T> Idle<T> {
    fn new(inner: T) -> (Self, Activity) {
        let activity = Activity {
            start: tokio::time::Instant::now(),
            last: std::sync::Arc::default(),
        };
        (
            Self {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, bytes);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether an HTTP/2 request carries a `host` header that disagrees with its `:authority`.
fn conflicting_authority<B>(request: &Request<B>) -> bool {
    if request.version() != hyper::Version::HTTP_2 {
        return false;
    }
    match (
        request.uri().authority(),
        request.headers().get(hyper::header::HOST),
    ) {
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
