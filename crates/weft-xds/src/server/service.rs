//! The ADS endpoint as a plain tower service, served by tonic's transport beside generated
//! services.
//!
//! tonic decodes the requests; responses are framed here. Each `DiscoveryResponse` is written
//! once into a buffer of exactly its size and handed to HTTP/2, which frees it when sent. A
//! generated tonic server would encode into one buffer per stream that keeps the capacity of
//! the largest message it ever sent: megabytes per proxy in a large mesh, for as long as the
//! proxy stays connected.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::AdsServer;
use super::codec::{AdsCodec, PreparedResponse};

/// The only method served; the incremental (delta) one is answered UNIMPLEMENTED.
const STREAM_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The largest request accepted, as tonic's default.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The aggregated discovery service, to add to a tonic server.
#[derive(Clone)]
pub struct AdsService {
    server: Arc<AdsServer>,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self {
            server: Arc::new(server),
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
        let requests =
            Streaming::new_request(AdsCodec, request.into_body(), None, Some(MAX_REQUEST_BYTES));
        let responses = self.server.open_stream(requests, peer);
        let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
            responses,
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

/// The response stream: one gRPC message per response, then the status as trailers.
struct ResponseBody {
    responses: mpsc::Receiver<Result<PreparedResponse, Status>>,
    finished: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let status = match ready!(self.responses.poll_recv(cx)) {
            Some(Ok(response)) => match grpc_message(&response) {
                Ok(message) => return Poll::Ready(Some(Ok(http_body::Frame::data(message)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            // The stream ended: the proxy closed its side or the server is shutting down.
            None => Status::ok(""),
        };
        self.finished = true;
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// A response as one gRPC message: a byte saying it is not compressed, its length, itself.
fn grpc_message(response: &PreparedResponse) -> Result<Bytes, Status> {
    let len = response.encoded_len();
    let Ok(prefix) = u32::try_from(len) else {
        return Err(Status::resource_exhausted(format!(
            "a {len}-byte response is too large for gRPC"
        )));
    };
    let mut message = BytesMut::with_capacity(5 + len);
    message.put_u8(0);
    message.put_u32(prefix);
    response.encode(&mut message);
    Ok(message.freeze())
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
