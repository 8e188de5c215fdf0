//! Everything the proxy answers itself because a request could not be served, in one place:
//! each failure is a [`ProxyError`] where it happens, its status and Envoy response flag
//! come from one exhaustive `match` each, and [`ProxyError::into_response`] is the only way
//! such a response is built. The flag rides in the response's extensions to the access log
//! and the metrics (the telemetry module), which also add it as a header with
//! `--debug-headers`.
//!
//! As Envoy answers them: no route `404 NR`, no cluster `503 NC`, circuit breaker full
//! `503 UO`, no healthy endpoint `503 UH`, connect failure `503 UF`, reset `503 UR`,
//! timeout `504 UT`, a request body that stalled `408 SI`, retries used up `503 URX`, denied by policy `403 RBAC`, a token that
//! does not verify `401` (with `www-authenticate`, Envoy's body), injected abort
//! with its status and `FI`. Where Envoy raises no flag, the access log and the metrics
//! carry a word saying why in its place: an upgrade other than WebSocket `403
//! upgrade_failed` (Envoy's response code detail for it), a `CONNECT` to where tunnels may
//! not lead `403 connect_denied`.

use std::io;
use std::net::SocketAddr;

use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::http::headers::GRPC_STATUS;
use crate::http::{Body, BoxError, full};
use crate::model::Abort;

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be proxied as it is.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The method is not served here (`CONNECT` at a gateway).
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    /// No route matches.
    #[error("no route")]
    NoRoute,
    /// The host belongs to another server of this gateway port (another SNI name): asked of
    /// the wrong connection.
    #[error("this host is served by another server of the port")]
    Misdirected,
    /// The route's cluster is not in the configuration.
    #[error("no cluster")]
    NoCluster,
    /// The inbound cluster of the application is not in the configuration.
    #[error("no inbound cluster")]
    NoInboundCluster,
    /// The cluster's circuit breaker is full.
    #[error("upstream overflow (circuit breaker)")]
    Overflow,
    /// No endpoint of the cluster is healthy.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The application behind an inbound port is not known.
    #[error("no application")]
    NoApplication,
    /// The upstream could not be reached, or broke off.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The route's deadline passed, or the last attempt's.
    #[error("upstream request timeout")]
    Timeout,
    /// The request's body sent nothing for the stream idle timeout.
    #[error("stream timeout")]
    StreamIdle,
    /// Every attempt was used and none gave an answer to pass on.
    #[error("retries exhausted")]
    RetriesExhausted,
    /// An authorization policy refuses the request.
    #[error("RBAC: access denied")]
    Denied,
    /// The request's token does not verify (RequestAuthentication).
    #[error("{0}")]
    Unauthenticated(crate::authn::JwtError),
    /// The route's fault injection aborted the request.
    #[error("fault filter abort")]
    Fault(Abort),
    /// An upgrade to a protocol other than WebSocket (Envoy: `403`, no body).
    #[error("upgrade refused")]
    UpgradeRefused,
    /// A `CONNECT` to an address tunnels may not lead to.
    #[error("CONNECT to {target} refused: {reason}")]
    TunnelDenied {
        /// The `host:port` asked for.
        target: String,
        /// Why, in a few words (`a loopback address`, …).
        reason: &'static str,
    },
}

/// Envoy's response flags, for what the proxy answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// `NR`: no route.
    NoRoute,
    /// `NC`: no cluster.
    NoCluster,
    /// `UO`: upstream overflow (circuit breaker).
    Overflow,
    /// `UH`: no healthy upstream.
    NoHealthyUpstream,
    /// `UF`: upstream connection failure.
    ConnectFailure,
    /// `UR`: upstream reset.
    Reset,
    /// `UT`: upstream request timeout.
    Timeout,
    /// `SI`: stream idle timeout.
    StreamIdle,
    /// `URX`: retry limit exceeded.
    RetriesExhausted,
    /// `RBAC`: denied by an authorization policy.
    Denied,
    /// `FI`: injected fault.
    Fault,
    /// `jwt_authn_access_denied`: the request's token does not verify. Envoy has no flag
    /// for it; this is its response code detail.
    Unauthenticated,
    /// `upgrade_failed`: an upgrade the route does not allow. Envoy has no flag for it;
    /// this is its response code detail.
    UpgradeFailed,
    /// `connect_denied`: a `CONNECT` to loopback, link-local, unspecified addresses or the
    /// proxy's own ports. Weft's own; Envoy has no such check.
    ConnectDenied,
}

impl ResponseFlag {
    /// The flag as Envoy writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoCluster => "NC",
            Self::Overflow => "UO",
            Self::NoHealthyUpstream => "UH",
            Self::ConnectFailure => "UF",
            Self::Reset => "UR",
            Self::Timeout => "UT",
            Self::StreamIdle => "SI",
            Self::RetriesExhausted => "URX",
            Self::Denied => "RBAC",
            Self::Fault => "FI",
            Self::Unauthenticated => "jwt_authn_access_denied",
            Self::UpgradeFailed => "upgrade_failed",
            Self::ConnectDenied => "connect_denied",
        }
    }
}

impl ProxyError {
    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::NoCluster
            | Self::NoInboundCluster
            | Self::Overflow
            | Self::NoHealthyUpstream
            | Self::NoApplication
            | Self::Upstream(_)
            | Self::RetriesExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StreamIdle => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Denied | Self::UpgradeRefused | Self::TunnelDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::Fault(Abort::Http(status)) => *status,
            // gRPC carries its status in `grpc-status`; the HTTP status is 200.
            Self::Fault(Abort::Grpc(_)) => StatusCode::OK,
        }
    }

    /// Its response flag; none for a request refused as malformed.
    pub fn flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::BadRequest(_) | Self::MethodNotAllowed(_) => None,
            Self::NoRoute | Self::Misdirected => Some(ResponseFlag::NoRoute),
            Self::NoCluster | Self::NoInboundCluster => Some(ResponseFlag::NoCluster),
            Self::Overflow => Some(ResponseFlag::Overflow),
            Self::NoHealthyUpstream | Self::NoApplication => Some(ResponseFlag::NoHealthyUpstream),
            Self::Upstream(UpstreamError::Connect(_)) => Some(ResponseFlag::ConnectFailure),
            Self::Upstream(UpstreamError::Reset(_)) => Some(ResponseFlag::Reset),
            Self::Timeout => Some(ResponseFlag::Timeout),
            Self::StreamIdle => Some(ResponseFlag::StreamIdle),
            Self::RetriesExhausted => Some(ResponseFlag::RetriesExhausted),
            Self::Denied => Some(ResponseFlag::Denied),
            Self::Unauthenticated(_) => Some(ResponseFlag::Unauthenticated),
            Self::Fault(_) => Some(ResponseFlag::Fault),
            Self::UpgradeRefused => Some(ResponseFlag::UpgradeFailed),
            Self::TunnelDenied { .. } => Some(ResponseFlag::ConnectDenied),
        }
    }

    /// The response: its status, a one-line body saying why (Envoy's bodies for a denial and
    /// an abort), and the flag in the extensions.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let flag = self.flag();
        let mut response = match &self {
            Self::Fault(Abort::Grpc(code)) => {
                let mut response = Response::new(full(Bytes::new()));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(GRPC_STATUS.clone(), HeaderValue::from(*code));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("fault filter abort"),
                );
                response
            }
            Self::Fault(Abort::Http(_)) | Self::Denied => {
                Response::new(full(Bytes::from(self.to_string())))
            }
            Self::UpgradeRefused => Response::new(full(Bytes::new())),
            Self::Unauthenticated(_) => {
                let mut response = Response::new(full(Bytes::from(self.to_string())));
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"weft\", error=\"invalid_token\""),
                );
                response
            }
            _ => Response::new(full(Bytes::from(format!("{self}\n")))),
        };
        *response.status_mut() = status;
        if let Some(flag) = flag {
            response.extensions_mut().insert(flag);
        }
        response
    }
}

/// Why a request did not reach the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP or TLS connection, or the HTTP handshake on it, failed (`UF`).
    #[error("upstream connect error: {0}")]
    Connect(ConnectError),
    /// The connection broke or was reset before a response (`UR`).
    #[error("upstream reset: {0}")]
    Reset(BoxError),
}

/// Why a connection to an upstream failed, with the I/O error's kind kept for whoever
/// decides what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection took longer than the cluster's connect timeout.
    #[error("timed out connecting to {0}")]
    Timeout(String),
    /// The TCP connection failed.
    #[error("{target}: {error}")]
    Io {
        /// Where it was going.
        target: String,
        /// Why it failed.
        error: io::Error,
    },
    /// The TLS handshake took longer than the connect timeout.
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(SocketAddr),
    /// The TLS handshake failed (bad certificate, wrong identity, no shared protocol).
    #[error("TLS handshake with {address}: {error}")]
    Tls {
        /// The upstream.
        address: SocketAddr,
        /// Why it failed.
        error: io::Error,
    },
    /// TLS could not be set up for the connection (no certificate yet, a bad SNI name).
    #[error("{0}")]
    TlsSetup(String),
    /// The HTTP/1.1 or HTTP/2 handshake on the connection failed.
    #[error("{protocol} handshake: {error}")]
    Handshake {
        /// `HTTP/1.1` or `HTTP/2`.
        protocol: &'static str,
        /// Why it failed.
        error: hyper::Error,
    },
}

impl ConnectError {
    /// The kind of I/O failure.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Timeout(_) | Self::TlsTimeout(_) => io::ErrorKind::TimedOut,
            Self::Io { error, .. } | Self::Tls { error, .. } => error.kind(),
            Self::TlsSetup(_) => io::ErrorKind::InvalidInput,
            Self::Handshake { .. } => io::ErrorKind::ConnectionAborted,
        }
    }
}

impl From<ConnectError> for ConnectionError {
    fn from(error: ConnectError) -> Self {
        Self::Unreachable(ProxyError::Upstream(UpstreamError::Connect(error)))
    }
}

impl UpstreamError {
    /// Whether no connection was made (Envoy's `connect-failure` retry condition), as
    /// opposed to one that broke off.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// Why a connection was refused, or ended before it was served; logged at debug level,
/// with the peer's address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The client sent nothing within the handshake timeout.
    #[error("no bytes in time")]
    Silent,
    /// Nothing crossed the connection for the idle timeout.
    #[error("idle for too long")]
    Idle,
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The TLS handshake took longer than the handshake timeout.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The server's TLS configuration could not be built (no certificate yet).
    #[error("TLS setup: {0}")]
    TlsSetup(rustls::Error),
    /// TLS on an inbound port whose PeerAuthentication is `DISABLE`.
    #[error("TLS on a port whose PeerAuthentication is DISABLE")]
    TlsRefused,
    /// Plaintext on an inbound port whose PeerAuthentication is `STRICT`.
    #[error("plaintext on a port whose PeerAuthentication is STRICT")]
    PlaintextRefused,
    /// Plaintext on a gateway port with TLS servers only.
    #[error("plaintext on a port with TLS servers only")]
    PlaintextOnTlsPort,
    /// An mTLS client presented no certificate.
    #[error("no client certificate")]
    NoClientCertificate,
    /// An mTLS client's certificate names no SPIFFE ID.
    #[error("the client certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// An mTLS client of another mesh.
    #[error("{0} is not in this mesh's trust domain")]
    ForeignTrustDomain(String),
    /// No TLS server of a gateway port answers the client's SNI name.
    #[error("no server for SNI {0:?}")]
    NoServerForSni(Option<String>),
    /// The gateway port was removed from the configuration.
    #[error("the port is no longer configured")]
    PortGone,
    /// A per-upstream port names no valid host and port.
    #[error("not a host and port: {0}")]
    BadUpstream(String),
    /// An authorization policy refuses the connection.
    #[error(transparent)]
    Denied(#[from] crate::authz::Denial),
    /// The application behind an inbound port is not known.
    #[error("no application")]
    NoApplication,
    /// The application could not be reached.
    #[error("the application at {address}: {error}")]
    Application {
        /// Where it listens.
        address: SocketAddr,
        /// Why it could not be reached.
        error: io::Error,
    },
    /// The upstream of opaque TCP could not be reached.
    #[error(transparent)]
    Unreachable(#[from] ProxyError),
    /// Serving HTTP on the connection failed.
    #[error("{0}")]
    Http(BoxError),
}

/// The response flag a response carries; `None` for one the upstream gave.
pub fn flag_of<B>(response: &Response<B>) -> Option<ResponseFlag> {
    response.extensions().get::<ResponseFlag>().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_envoys_status_and_flag() {
        let cases = [
            (ProxyError::NoRoute, 404, Some("NR")),
            (ProxyError::NoCluster, 503, Some("NC")),
            (ProxyError::Overflow, 503, Some("UO")),
            (ProxyError::NoHealthyUpstream, 503, Some("UH")),
            (
                ProxyError::Upstream(UpstreamError::Connect(ConnectError::Timeout("x".into()))),
                503,
                Some("UF"),
            ),
            (
                ProxyError::Upstream(UpstreamError::Reset("gone".into())),
                503,
                Some("UR"),
            ),
            (ProxyError::Timeout, 504, Some("UT")),
            (ProxyError::RetriesExhausted, 503, Some("URX")),
            (ProxyError::Denied, 403, Some("RBAC")),
            (
                ProxyError::Fault(Abort::Http(StatusCode::IM_A_TEAPOT)),
                418,
                Some("FI"),
            ),
            (ProxyError::BadRequest("bad path"), 400, None),
            (ProxyError::UpgradeRefused, 403, Some("upgrade_failed")),
            (
                ProxyError::TunnelDenied {
                    target: "127.0.0.1:15000".into(),
                    reason: "a loopback address",
                },
                403,
                Some("connect_denied"),
            ),
        ];
        for (error, status, flag) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(flag_of(&response).map(ResponseFlag::as_str), flag);
        }
    }

    #[test]
    fn a_grpc_abort_is_a_200_with_its_grpc_status() {
        let response = ProxyError::Fault(Abort::Grpc(14)).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[&GRPC_STATUS], "14");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
    }
}
