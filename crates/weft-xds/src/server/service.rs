//! The ADS endpoint as a plain tower service, served by tonic's transport beside generated
//! services.
//!
//! tonic decodes the requests; responses are framed here. Each `DiscoveryResponse` is written
//! once into a buffer of exactly its size and handed to HTTP/2, which frees it when sent. A
//! generated tonic server would encode into one buffer per stream that keeps the capacity of
//! the largest message it ever sent: megabytes per proxy in a large mesh, for as long as the
//! proxy stays connected.
//!
//! A response is encoded only when HTTP/2 can take it, and encoded responses not yet written
//! to the network share one budget ([`SEND_BUDGET_BYTES`]): when a hundred proxies reconnect
//! at once, they are served a few at a time instead of the control plane holding every
//! proxy's configuration in memory together. A response that waits longer than
//! [`BUDGET_WAIT`] goes out anyway, so proxies that never read cannot stall the others.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use prost::bytes::{BufMut, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::codec::Streaming;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::AdsServer;
use super::Caller;
use super::codec::{AdsCodec, PreparedResponse};

/// The only method served; the incremental (delta) one is answered UNIMPLEMENTED.
const STREAM_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The largest request accepted, as tonic's default.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes of encoded responses may wait for the network at once, over all streams.
const SEND_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// The budget is counted in KiB, so a permit count fits a `u32`.
const BUDGET_UNIT: usize = 1024;

/// How long a response waits for the budget before it goes out regardless.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The aggregated discovery service, to add to a tonic server.
#[derive(Clone)]
pub struct AdsService {
    server: Arc<AdsServer>,
    budget: Arc<Semaphore>,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self {
            server: Arc::new(server),
            budget: Arc::new(Semaphore::new(SEND_BUDGET_BYTES / BUDGET_UNIT)),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != STREAM_METHOD {
            return std::future::ready(Ok(Status::unimplemented(
                "Weft serves state-of-the-world ADS (StreamAggregatedResources); incremental xDS is not supported yet",
            )
            .into_http()));
        }
        if request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity")
        {
            return std::future::ready(Ok(Status::unimplemented(
                "compressed xDS requests are not supported",
            )
            .into_http()));
        }
        let peer = remote_addr(&request);
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default();
        let requests =
            Streaming::new_request(AdsCodec, request.into_body(), None, Some(MAX_REQUEST_BYTES));
        let responses = self.server.open_stream(requests, peer, caller);
        let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
            responses,
            budget: self.budget.clone(),
            next: None,
            finished: false,
        }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        std::future::ready(Ok(response))
    }
}

fn remote_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// A share of the send budget, held until the response is written out.
type Admission = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// The response stream: one gRPC message per response, then the status as trailers.
struct ResponseBody {
    responses: mpsc::Receiver<Result<PreparedResponse, Status>>,
    budget: Arc<Semaphore>,
    /// The response to send next, waiting for its share of the budget.
    next: Option<(PreparedResponse, Admission)>,
    finished: bool,
}

impl ResponseBody {
    fn admission(&self, response: &PreparedResponse) -> Admission {
        let units = response
            .encoded_len()
            .div_ceil(BUDGET_UNIT)
            .min(SEND_BUDGET_BYTES / BUDGET_UNIT);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let budget = self.budget.clone();
        Box::pin(async move {
            tokio::time::timeout(BUDGET_WAIT, budget.acquire_many_owned(units))
                .await
                .ok()
                .and_then(Result::ok)
        })
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let status = loop {
            if let Some((response, admission)) = &mut this.next {
                let permit = ready!(admission.as_mut().poll(cx));
                let message = grpc_message(response, permit);
                this.next = None;
                match message {
                    Ok(message) => return Poll::Ready(Some(Ok(http_body::Frame::data(message)))),
                    Err(status) => break status,
                }
            }
            match ready!(this.responses.poll_recv(cx)) {
                Some(Ok(response)) => {
                    let admission = this.admission(&response);
                    this.next = Some((response, admission));
                }
                Some(Err(status)) => break status,
                // The stream ended: the proxy closed its side or the server is shutting down.
                None => break Status::ok(""),
            }
        };
        this.finished = true;
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// An encoded response and its share of the send budget, given back when HTTP/2 has written
/// the bytes and drops them.
struct Budgeted {
    message: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.message
    }
}

/// A response as one gRPC message: a byte saying it is not compressed, its length, itself.
fn grpc_message(
    response: &PreparedResponse,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Bytes, Status> {
    let len = response.encoded_len();
    let Ok(prefix) = u32::try_from(len) else {
        return Err(Status::resource_exhausted(format!(
            "a {len}-byte response is too large for gRPC"
        )));
    };
    let mut message = Vec::with_capacity(5 + len);
    message.put_u8(0);
    message.put_u32(prefix);
    response.encode(&mut message);
    Ok(Bytes::from_owner(Budgeted {
        message,
        _permit: permit,
    }))
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only the message could not be written; the code always can.
        trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    if status.code() == Code::Ok {
        trailers.remove("grpc-message");
    }
    trailers
}
