//! HTTP basics every part of the proxy shares, and nothing else: the one body type proxied
//! messages are converted to, the headers the proxy reads or writes itself
//! ([`headers`]), and the server-side guard against ambiguous request framing
//! ([`framing`]). This module depends on no other module of the crate.

pub mod framing;
pub mod headers;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
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

/// A body hyper received, as a [`Body`].
pub fn boxed(body: Incoming) -> Body {
    body.map_err(|error| BodyError(Box::new(error))).boxed()
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
