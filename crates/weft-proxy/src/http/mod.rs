//! HTTP basics every part of the proxy shares, and nothing else: the one body type proxied
//! messages are converted to, the headers the proxy reads or writes itself
//! ([`headers`]), and the server-side guard against ambiguous request framing
//! ([`framing`]). This module depends on no other module of the crate.

pub mod framing;
pub mod headers;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Response, StatusCode};

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

/// How long a body hyper received may keep the proxy waiting for its next frame (Envoy's
/// `stream_idle_timeout`, five minutes by default); set once when the proxy starts.
static STREAM_IDLE_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the stream idle timeout of this process; the first call wins.
pub fn set_stream_idle_timeout(timeout: Duration) {
    let _ = STREAM_IDLE_TIMEOUT.set(timeout);
}

/// A body hyper received, as a [`Body`]: one that stalls (sends nothing for the stream idle
/// timeout while it is read) breaks off, so that a client trickling a request body, or an
/// upstream a response, cannot hold the proxy's stream forever.
pub fn boxed(body: Incoming) -> Body {
    Stalling {
        inner: body,
        timeout: *STREAM_IDLE_TIMEOUT.get_or_init(|| Duration::from_secs(300)),
        timer: None,
    }
    .boxed()
}

/// A received body with the stream idle timeout. The timer runs only while the body is
/// read and has nothing: a reader that is slow to ask (backpressure) does not count.
struct Stalling {
    inner: Incoming,
    timeout: Duration,
    /// Set when a read finds nothing, cleared when a frame arrives.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a stalled body broke off.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout: nothing for {0:?}")]
pub struct StreamIdle(Duration);

/// Whether a body broke off because it stalled.
pub fn is_stream_idle(error: &BoxError) -> bool {
    error
        .downcast_ref::<BodyError>()
        .is_some_and(|body| body.0.is::<StreamIdle>())
        || error.is::<StreamIdle>()
}

impl hyper::body::Body for Stalling {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(|error| BodyError(Box::new(error)))))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(BodyError(Box::new(StreamIdle(timeout))))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes held in memory, as a [`Body`]; an empty body allocates nothing.
pub fn full(bytes: Bytes) -> Body {
    if bytes.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

/// A response the proxy answers itself that is not an error: a route's direct response, a
/// redirect, a tunnel's `200`. Errors are answered by `ProxyError`.
pub fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response
}
