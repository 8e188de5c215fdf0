//! A lean HTTP/1.1 client for the requests that have no body — most of a mesh's traffic.
//!
//! hyper's client drives each connection from a task of its own, so a request crosses from
//! the downstream connection's task to the upstream connection's task and its response
//! crosses back, each crossing a channel send, a wake-up and a poll of both state machines.
//! Here the request's own task does the work: [`Connection::send`] writes the request head
//! and reads the response head, and the connection then travels inside the response's
//! [`ResponseBody`], which reads the body as the downstream side asks for it and hands the
//! connection back to its pool once the body has ended and the connection may be reused.
//!
//! It follows RFC 9112 for what it receives: interim (1xx) responses are skipped; a response
//! to `HEAD`, and a `204` or `304`, has no body; `Transfer-Encoding: chunked` wins over
//! `Content-Length` (and the connection is not reused after such a response); conflicting
//! `Content-Length` values are refused; without either, the body runs until the upstream
//! closes. A connection is reused only after an HTTP/1.1 response without `Connection:
//! close` whose body was read to its end.
//!
//! Requests with a body, upgrades and HTTP/2 stay with hyper (see [`super`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::connect::Stream;
// A response head (or a chunked body's trailer block) is refused beyond `MAX_HEAD` bytes or
// `MAX_HEADERS` headers.
use crate::http::framing::{MAX_HEAD, MAX_HEADERS};
use crate::http::{BodyError, BoxError};
/// How much room a read asks for.
const READ_SIZE: usize = 16 * 1024;

/// An HTTP/1.1 connection to an upstream, idle between requests.
pub struct Connection {
    io: Box<dyn Stream>,
    /// Bytes read from the upstream and not consumed yet.
    read: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    write: Vec<u8>,
}

/// Where a connection goes once a response body ends and the connection may be reused.
pub type Release = Box<dyn FnOnce(Connection) + Send + Sync>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The connection was found closed before anything of a response arrived, in a way
    /// that means the upstream cannot have acted on the request: it may go again on another
    /// connection.
    Stale(io::Error),
    /// Anything else.
    Failed(BoxError),
}

impl Connection {
    /// A connection over `io`, just connected.
    pub fn new(io: Box<dyn Stream>) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection still looks usable: not closed by the upstream, and
    /// with nothing unasked for waiting to be read.
    pub fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut context = Context::from_waker(std::task::Waker::noop());
        // Ready means bytes nobody asked for, the end of the stream, or an error.
        self.poll_fill(&mut context).is_pending()
    }

    /// Reads more of the stream into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Sends `request` (whose body must be empty) and reads the response head. `reused`
    /// says the connection served requests before, so that its closing before any response
    /// is a stale connection rather than a failure. The response's body gives the
    /// connection to `release` once it may be reused.
    pub async fn send<B>(
        mut self,
        request: &Request<B>,
        reused: bool,
        release: Release,
    ) -> Result<Response<ResponseBody>, SendError> {
        encode_head(request, &mut self.write);
        let written = async {
            self.io.write_all(&self.write).await?;
            self.io.flush().await
        }
        .await;
        if let Err(error) = written {
            return Err(if reused {
                SendError::Stale(error)
            } else {
                SendError::Failed(error.into())
            });
        }
        // A reused connection that closes before any response byte lost a race with the
        // upstream's idle timeout; an idempotent request can safely go again.
        let may_retry = reused && is_idempotent(request.method());
        let mut received_any = false;
        loop {
            match parse_head(&mut self.read) {
                Ok(Some(head)) if head.status.is_informational() => {
                    received_any = true;
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(SendError::Failed(
                            "the upstream switched protocols without being asked to".into(),
                        ));
                    }
                }
                Ok(Some(head)) => {
                    return Ok(self.respond(head, request.method() == Method::HEAD, release));
                }
                Ok(None) => {
                    let stale = |error: io::Error| {
                        if may_retry && !received_any {
                            SendError::Stale(error)
                        } else {
                            SendError::Failed(error.into())
                        }
                    };
                    match self.fill().await {
                        Ok(0) => {
                            return Err(stale(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the upstream closed the connection before responding",
                            )));
                        }
                        Ok(_) => received_any = true,
                        Err(error) => return Err(stale(error)),
                    }
                }
                Err(error) => return Err(SendError::Failed(error)),
            }
        }
    }

    /// The response for a head just read, its body framed as RFC 9112 §6.3 says.
    fn respond(
        self,
        head: Head,
        to_head_request: bool,
        release: Release,
    ) -> Response<ResponseBody> {
        let status = head.status;
        let no_body = to_head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let (framing, mut reusable) = if no_body {
            (Framing::Length(0), true)
        } else if head.chunked {
            (
                Framing::Chunked(Chunked::Size),
                head.content_length.is_none(),
            )
        } else if let Some(length) = head.content_length {
            (Framing::Length(length), true)
        } else {
            (Framing::UntilClose, false)
        };
        reusable &= head.keep_alive;
        let mut response = Response::new(ResponseBody {
            connection: Some(self),
            framing,
            release: reusable.then_some(release),
        });
        *response.status_mut() = status;
        *response.headers_mut() = head.headers;
        response.body_mut().release_if_done();
        response
    }
}

/// Methods a request can be repeated with, when nothing came back the first time.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Writes the request line and headers of `request` into `out`, which is cleared first.
fn encode_head<B>(request: &Request<B>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A method whose requests normally carry a body says that this one has none.
    let expects_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if expects_body
        && !request
            .headers()
            .contains_key(hyper::header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head, parsed.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
}

/// Parses a response head at the start of `buffer`, consuming it; `None` while incomplete.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<Head>, BoxError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => {
            return Err("the upstream's response head is too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("the upstream's response head: {error}").into()),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| "the upstream's response has no valid status")?;
    let http11 = response.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut transfer_coded = false;
    let mut keep_alive = http11;
    // Which headers go on: `Connection` and `Keep-Alive` stay behind when `Connection` holds
    // only the connection's own options (so the next hop's hop-by-hop stripping finds
    // nothing to do), as does `Transfer-Encoding`, whose coding is undone here.
    let mut kept = [false; MAX_HEADERS];
    let mut names_headers = false;
    for (header, kept) in response.headers.iter().zip(kept.iter_mut()) {
        let name = header.name;
        *kept = true;
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("the upstream sent a bad Content-Length")?;
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return Err("the upstream sent conflicting Content-Length values".into());
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_coded = true;
            *kept = false;
            chunked = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    names_headers = true;
                }
            }
        } else if name.eq_ignore_ascii_case("keep-alive") {
            *kept = false;
        }
    }
    // What depends on every header having been seen.
    for (header, kept) in response.headers.iter().zip(kept.iter_mut()) {
        if (!names_headers && header.name.eq_ignore_ascii_case("connection"))
            // The transfer coding frames the body, not a Content-Length beside it (RFC 9112
            // §6.3), which must not reach the next hop either.
            || (transfer_coded && header.name.eq_ignore_ascii_case("content-length"))
        {
            *kept = false;
        }
    }
    if transfer_coded && !chunked {
        // Framed by some other coding: the body runs until the connection closes.
        content_length = None;
        keep_alive = false;
    }
    // The values share the buffer the head was read into.
    let start = buffer.as_ptr() as usize;
    let fields = response
        .headers
        .iter()
        .zip(kept)
        .filter(|(_, kept)| *kept)
        .map(|(header, _)| {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| format!("the upstream sent a bad header name {:?}", header.name))?;
            let offset = header.value.as_ptr() as usize - start;
            Ok((name, offset..offset + header.value.len()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let head = buffer.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, span) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(span))
            .map_err(|_| format!("the upstream sent a bad value for {name}"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        headers,
        content_length,
        chunked,
        keep_alive,
    }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailers, then the empty line.
    Trailers,
}

/// A response body read from its connection as it is polled.
pub struct ResponseBody {
    /// The connection, until the body has ended or broken.
    connection: Option<Connection>,
    framing: Framing,
    /// Where the connection goes after the body, when it may be reused.
    release: Option<Release>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// Once the body has ended, the connection goes back to its pool (or is closed).
    fn release_if_done(&mut self) {
        if self.framing == Framing::Length(0)
            && let Some(connection) = self.connection.take()
            && let Some(release) = self.release.take()
        {
            release(connection);
        }
    }

    fn finish(&mut self) {
        self.framing = Framing::Length(0);
        self.release_if_done();
        self.connection = None;
    }

    fn fail(&mut self, message: &'static str) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.connection = None;
        self.framing = Framing::Length(0);
        Poll::Ready(Some(Err(BodyError(message.into()))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = &mut connection.read;
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !buffered.is_empty() => {
                    let take = buffered
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = buffered.split_to(take).freeze();
                    *left -= take as u64;
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !buffered.is_empty() => {
                    let data = buffered.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunked::Size) => match httparse::parse_chunk_size(buffered) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buffered.advance(used);
                        this.framing = Framing::Chunked(if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buffered.len() < 1024 => {}
                    _ => return this.fail("the upstream sent a bad chunk size"),
                },
                Framing::Chunked(Chunked::Data(left)) if !buffered.is_empty() => {
                    let take = buffered
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = buffered.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.framing = Framing::Chunked(Chunked::DataEnd);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunked::DataEnd) if buffered.len() >= 2 => {
                    if &buffered[..2] != b"\r\n" {
                        return this.fail("the upstream's chunk does not end where it said");
                    }
                    buffered.advance(2);
                    this.framing = Framing::Chunked(Chunked::Size);
                    continue;
                }
                Framing::Chunked(Chunked::Trailers) => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buffered, &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let trailers: HeaderMap = fields
                                .iter()
                                .filter_map(|field| {
                                    Some((
                                        HeaderName::from_bytes(field.name.as_bytes()).ok()?,
                                        HeaderValue::from_bytes(field.value).ok()?,
                                    ))
                                })
                                .collect();
                            buffered.advance(used);
                            this.finish();
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if buffered.len() < MAX_HEAD => {}
                        _ => return this.fail("the upstream sent bad trailers"),
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            match ready!(connection.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the upstream closed the connection mid-body"),
                Ok(_) => {}
                Err(_) => return this.fail("the upstream connection broke mid-body"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path)
            .header("host", "upstream")
            .body(())
            .unwrap()
    }

    /// What one request on a new connection came to.
    struct Exchange {
        sent: Result<Response<ResponseBody>, SendError>,
        /// The request head as the upstream read it.
        head: String,
        /// The connections given back for reuse.
        kept: Arc<Mutex<Vec<Connection>>>,
        /// The upstream's end, while it stays open.
        _upstream: Option<DuplexStream>,
    }

    /// Sends `request` on a new connection whose upstream, played by the test, reads the
    /// request head, writes `chunks` one by one and then closes if `close`.
    async fn exchange<B>(request: &Request<B>, chunks: &[&[u8]], close: bool) -> Exchange {
        let (ours, mut upstream) = tokio::io::duplex(64 * 1024);
        let kept = Arc::new(Mutex::new(Vec::new()));
        let into = kept.clone();
        let release: Release = Box::new(move |c| into.lock().unwrap().push(c));
        let server = async {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(upstream.read_u8().await.unwrap());
            }
            for chunk in chunks {
                upstream.write_all(chunk).await.unwrap();
            }
            String::from_utf8(head).unwrap()
        };
        let connection = Connection::new(Box::new(ours));
        let (sent, head) = tokio::join!(connection.send(request, false, release), server);
        Exchange {
            sent,
            head,
            kept,
            _upstream: (!close).then_some(upstream),
        }
    }

    #[tokio::test]
    async fn a_content_length_response_is_read_and_the_connection_released() {
        let exchange = exchange(
            &get("/a?b=c"),
            &[
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhel",
                b"lo",
            ],
            false,
        )
        .await;
        assert_eq!(
            exchange.head,
            "GET /a?b=c HTTP/1.1\r\nhost: upstream\r\n\r\n"
        );
        let response = exchange.sent.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-a"], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(exchange.kept.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_connections_own_options_stay_behind() {
        let own = exchange(
            &get("/"),
            &[b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"],
            false,
        )
        .await;
        let response = own.sent.unwrap();
        let names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-a"]);
        assert_eq!(own.kept.lock().unwrap().len(), 1);

        // A Connection header naming other headers is kept, for the hop-by-hop stripping
        // to remove them.
        let naming = exchange(
            &get("/"),
            &[b"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"],
            true,
        )
        .await;
        let mut response = naming.sent.unwrap();
        assert_eq!(response.headers()["connection"], "close, X-A");
        crate::http::headers::strip_hop_by_hop(response.headers_mut());
        let names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length"]);
        assert!(naming.kept.lock().unwrap().is_empty(), "closed, not reused");
    }

    #[tokio::test]
    async fn a_chunked_response_with_trailers_is_decoded() {
        let exchange = exchange(
            &get("/"),
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n",
                b"2\r\nde\r\n0\r\nGrpc-Status: 0\r\n\r\n",
            ],
            false,
        )
        .await;
        let collected = exchange.sent.unwrap().into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "abcde");
        assert_eq!(exchange.kept.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn chunked_wins_over_a_content_length_which_is_dropped() {
        let exchange = exchange(
            &get("/"),
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
        )
        .await;
        let response = exchange.sent.unwrap();
        assert!(!response.headers().contains_key("content-length"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        assert!(
            exchange.kept.lock().unwrap().is_empty(),
            "not reused after such a response"
        );
    }

    #[tokio::test]
    async fn a_response_without_length_runs_to_close_and_is_not_reused() {
        let exchange = exchange(&get("/"), &[b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], true).await;
        let body = exchange.sent.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "until the end");
        assert!(exchange.kept.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_framing_is_refused() {
        for response in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            let exchange = exchange(&get("/"), &[response], false).await;
            assert!(
                matches!(exchange.sent, Err(SendError::Failed(_))),
                "{response:?}"
            );
        }
        // A body cut short is an error, not a short body.
        let exchange = exchange(
            &get("/"),
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
            true,
        )
        .await;
        assert!(exchange.sent.unwrap().into_body().collect().await.is_err());
        assert!(exchange.kept.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reused_connection_closed_before_responding_is_stale() {
        let (ours, upstream) = tokio::io::duplex(64 * 1024);
        let mut connection = Connection::new(Box::new(ours));
        assert!(connection.is_usable());
        drop(upstream);
        assert!(!connection.is_usable());
        let sent = connection.send(&get("/"), true, Box::new(drop)).await;
        assert!(matches!(sent, Err(SendError::Stale(_))));
    }

    #[tokio::test]
    async fn a_head_or_204_response_has_no_body_and_an_empty_post_says_so() {
        let request = Request::post("/").header("host", "u").body(()).unwrap();
        let exchange = exchange(&request, &[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
        assert!(
            exchange.head.contains("content-length: 0\r\n"),
            "{}",
            exchange.head
        );
        let response = exchange.sent.unwrap();
        assert!(response.body().is_end_stream());
        assert_eq!(exchange.kept.lock().unwrap().len(), 1);
    }
}
