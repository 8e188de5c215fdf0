//! A guard in front of the HTTP/1.1 server that refuses requests whose length is ambiguous.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is the classic request
//! smuggling vector: two servers that pick different lengths disagree on where the next
//! request starts. hyper follows RFC 9112 §6.3 (chunked wins, the connection closes
//! afterwards), which is safe, but gives no way to refuse such a request; Envoy answers 400,
//! and so does Weft. [`FramingGuard`] sits between the socket and hyper, follows the
//! request framing on the byte stream (heads, `Content-Length` bodies, chunked bodies), and
//! when a head carries both headers it puts a byte no header name may hold before the empty
//! line that ends the head, so hyper itself answers `400 Bad Request` and closes the
//! connection.
//!
//! Only what could be the start of that empty line is held back; the rest of a head reaches
//! hyper as it arrives (so hyper's header timeout sees a slow client), and body bytes pass
//! straight through. HTTP/2, `CONNECT`, upgrades and anything the guard cannot follow pass
//! through untouched from then on: hyper still applies its own checks to them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest message head accepted, requests and responses (Envoy's default is 60 KiB); a
/// larger request head gets 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers a message head may carry; a request with more gets 431.
pub const MAX_HEADERS: usize = 100;

/// Wraps a connection's byte stream; see the module documentation.
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    /// The head being received, for parsing once complete.
    held: BytesMut,
    /// How much of `held` has gone to hyper already.
    released: usize,
    /// Bytes checked and ready for hyper.
    ready: BytesMut,
    /// The client closed its side.
    eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head.
    Head,
    /// Inside a body of known length: this many bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// No longer following the framing.
    PassThrough,
}

impl<T> FramingGuard<T> {
    /// Guards `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            state: State::Head,
            held: BytesMut::new(),
            released: 0,
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// Runs the framing over bytes just read, moving them to `ready` (the end of a head
    /// that is not complete yet stays in `held`).
    fn feed(&mut self, mut input: BytesMut) {
        while !input.is_empty() {
            if self.state == State::Head {
                self.held.extend_from_slice(&input);
                input.clear();
                if let Some(rest) = self.check_head() {
                    input = rest;
                }
            } else {
                let passed = self.pass(&input);
                self.ready.extend_from_slice(&input.split_to(passed));
            }
        }
    }

    /// Looks at the head received so far. While it is incomplete, releases all of it but
    /// what could begin the empty line that ends it; once complete, releases the rest (with
    /// a byte that makes hyper refuse it when its length is ambiguous), sets the state for
    /// its body, and returns what followed it.
    fn check_head(&mut self) -> Option<BytesMut> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&self.held);
        let (length, next) = match parsed {
            Ok(httparse::Status::Partial) if self.held.len() <= MAX_HEAD => {
                let line_start = self
                    .held
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |at| at + 1);
                let keep = usize::from(&self.held[line_start..] == b"\r");
                let upto = self.held.len() - keep;
                self.ready
                    .extend_from_slice(&self.held[self.released.min(upto)..upto]);
                self.released = self.released.max(upto);
                return None;
            }
            Ok(httparse::Status::Complete(length)) => (length, body_of(&request)),
            // Too large, too many headers, malformed: hyper refuses it.
            _ => (self.held.len(), Next::Stop),
        };
        let rest = self.held.split_off(length);
        let unreleased = &self.held[self.released..];
        let refuse = matches!(next, Next::Refuse);
        self.state = State::after(next);
        if refuse {
            // The empty line is still unreleased: a NUL before it starts a header name no
            // request may have.
            let blank = if unreleased.ends_with(b"\r\n") { 2 } else { 1 };
            let (before, empty_line) = unreleased.split_at(unreleased.len().saturating_sub(blank));
            self.ready.extend_from_slice(before);
            self.ready.extend_from_slice(b"\0");
            self.ready.extend_from_slice(empty_line);
        } else {
            self.ready.extend_from_slice(unreleased);
        }
        self.held.clear();
        self.released = 0;
        Some(rest)
    }
}

/// What follows a request head.
enum Next {
    Nothing,
    Length(u64),
    Chunked,
    /// Stop following: a protocol switch, or something hyper will refuse anyway.
    Stop,
    /// Ambiguous length: refuse.
    Refuse,
}

fn body_of(request: &httparse::Request<'_, '_>) -> Next {
    if request.method == Some("CONNECT") || request.version != Some(1) {
        return Next::Stop;
    }
    let mut length = None;
    let mut transfer_encoding = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("upgrade") {
            return Next::Stop;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let Some(value) = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Next::Stop;
            };
            if length.is_some_and(|l| l != value) {
                return Next::Stop;
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(header.value);
        }
    }
    match (length, transfer_encoding) {
        (Some(_), Some(_)) => Next::Refuse,
        (Some(length), None) => Next::Length(length),
        (None, Some(value)) if ends_in_chunked(value) => Next::Chunked,
        (None, Some(_)) => Next::Stop,
        (None, None) => Next::Nothing,
    }
}

fn ends_in_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Where a chunked body's scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a chunk-size line: the size so far, hex digits seen, and whether an extension
    /// started.
    Size {
        size: u64,
        digits: u32,
        extension: bool,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data, expecting CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// After a trailer line's CR; `last` when the line was empty (the body's end).
    TrailerLf {
        last: bool,
    },
}

impl Default for Chunked {
    fn default() -> Self {
        Self::Size {
            size: 0,
            digits: 0,
            extension: false,
        }
    }
}

enum Outcome {
    More,
    Done,
    Invalid,
}

impl Chunked {
    /// Scans `bytes`; returns how many belong to the body and whether it ended.
    fn scan(&mut self, bytes: &[u8]) -> (usize, Outcome) {
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            *self = match *self {
                Self::Size {
                    size,
                    digits,
                    extension,
                } => {
                    at += 1;
                    match byte {
                        b'\r' if digits > 0 => Self::SizeLf { size },
                        _ if extension => *self,
                        b';' | b' ' | b'\t' => Self::Size {
                            size,
                            digits,
                            extension: true,
                        },
                        _ => match (byte as char).to_digit(16) {
                            Some(value) if digits < 15 => Self::Size {
                                size: size * 16 + u64::from(value),
                                digits: digits + 1,
                                extension,
                            },
                            _ => return (at, Outcome::Invalid),
                        },
                    }
                }
                Self::SizeLf { size } => {
                    at += 1;
                    match (byte, size) {
                        (b'\n', 0) => Self::TrailerStart,
                        (b'\n', size) => Self::Data(size),
                        _ => return (at, Outcome::Invalid),
                    }
                }
                Self::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += take;
                    match left - take as u64 {
                        0 => Self::DataCr,
                        left => Self::Data(left),
                    }
                }
                Self::DataCr | Self::DataLf => {
                    at += 1;
                    match (*self, byte) {
                        (Self::DataCr, b'\r') => Self::DataLf,
                        (Self::DataLf, b'\n') => Self::default(),
                        _ => return (at, Outcome::Invalid),
                    }
                }
                Self::TrailerStart => {
                    at += 1;
                    if byte == b'\r' {
                        Self::TrailerLf { last: true }
                    } else {
                        Self::TrailerLine
                    }
                }
                Self::TrailerLine => match bytes[at..].iter().position(|b| *b == b'\r') {
                    Some(cr) => {
                        at += cr + 1;
                        Self::TrailerLf { last: false }
                    }
                    None => {
                        at = bytes.len();
                        Self::TrailerLine
                    }
                },
                Self::TrailerLf { last } => {
                    at += 1;
                    match (byte, last) {
                        (b'\n', true) => return (at, Outcome::Done),
                        (b'\n', false) => Self::TrailerStart,
                        _ => return (at, Outcome::Invalid),
                    }
                }
            };
        }
        (at, Outcome::More)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // The rest of an unfinished head; hyper sees it, then the end.
                if this.released < this.held.len() {
                    this.ready.extend_from_slice(&this.held[this.released..]);
                    this.held.clear();
                    this.released = 0;
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            // Read straight into hyper's buffer; body bytes stay there, a head moves out
            // until it is complete.
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let after = buf.filled().len();
            if after == before {
                this.eof = true;
                continue;
            }
            let kept = this.pass(&buf.filled()[before..]);
            if before + kept < after {
                let rest = BytesMut::from(&buf.filled()[before + kept..]);
                buf.set_filled(before + kept);
                this.feed(rest);
            }
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T> FramingGuard<T> {
    /// How many of the leading bytes of `new` are body (or unfollowed) bytes that can go
    /// to hyper as they are.
    /// Whole heads (the usual case: a request arrives in one read) are checked where they
    /// lie, without copying; a partial or refused head stops the pass.
    fn pass(&mut self, new: &[u8]) -> usize {
        let mut used = 0;
        while used < new.len() {
            let rest = &new[used..];
            let taken = match self.state {
                State::PassThrough => rest.len(),
                State::Head => self.head_in_place(rest).unwrap_or(0),
                State::Body(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                    take
                }
                State::Chunked(mut chunked) => {
                    let (taken, outcome) = chunked.scan(rest);
                    self.state = match outcome {
                        Outcome::More => State::Chunked(chunked),
                        Outcome::Done => State::Head,
                        Outcome::Invalid => State::PassThrough,
                    };
                    taken
                }
            };
            if taken == 0 {
                break;
            }
            used += taken;
        }
        used
    }

    /// The length of a whole, unambiguous head at the start of `bytes`, with the state set
    /// for what follows it; `None` for anything else (partial, refused, malformed), which
    /// goes the slow way through `held`.
    fn head_in_place(&mut self, bytes: &[u8]) -> Option<usize> {
        if !self.held.is_empty() {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(length)) = request.parse(bytes) else {
            return None;
        };
        let next = body_of(&request);
        if matches!(next, Next::Refuse) {
            return None;
        }
        self.state = State::after(next);
        Some(length)
    }
}

impl State {
    /// The state after a head that `next` describes.
    fn after(next: Next) -> State {
        match next {
            Next::Nothing | Next::Length(0) => State::Head,
            Next::Length(length) => State::Body(length),
            Next::Chunked => State::Chunked(Chunked::default()),
            Next::Stop | Next::Refuse => State::PassThrough,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would read.
    fn through(input: &[u8], step: usize) -> (Vec<u8>, State) {
        let mut guard = FramingGuard::new(());
        for piece in input.chunks(step) {
            guard.feed(BytesMut::from(piece));
        }
        let mut out = guard.ready.to_vec();
        out.extend_from_slice(&guard.held[guard.released..]);
        (out, guard.state)
    }

    #[test]
    fn pipelined_requests_pass_unchanged_whatever_the_read_sizes() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;ext=1\r\nworld\r\n0\r\nTrailer: yes\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (out, state) = through(input, step);
            assert_eq!(out, input.to_vec(), "step {step}");
            assert_eq!(state, State::Head, "step {step}");
        }
    }

    #[test]
    fn a_head_with_both_lengths_is_spoiled_wherever_it_sits() {
        let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n";
        let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let first = input.len();
        input.extend_from_slice(smuggle);
        let spoiled_head = first + smuggle.iter().position(|b| *b == b'0').unwrap_or(0) - 2;
        for step in [1, 5, input.len()] {
            let (out, state) = through(&input, step);
            assert_eq!(&out[..spoiled_head], &input[..spoiled_head], "step {step}");
            assert_eq!(
                &out[spoiled_head..spoiled_head + 3],
                b"\0\r\n",
                "step {step}"
            );
            assert_eq!(state, State::PassThrough);
        }
        // Either order of the two headers.
        let other = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert!(through(other, 3).0.ends_with(b"\r\n\0\r\n"));
    }

    /// What hyper reads through the guard when the whole input arrives in one read.
    async fn read_at_once(input: &[u8]) -> Vec<u8> {
        let mut guard = FramingGuard::new(input);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut guard, &mut out)
            .await
            .expect("reading from memory");
        out
    }

    #[tokio::test]
    async fn whole_heads_in_one_read_are_checked_in_place() {
        // Thousands of tiny pipelined requests in one read: a loop, not a deep recursion.
        let many = b"GET / HTTP/1.1\r\n\r\n".repeat(20_000);
        assert_eq!(read_at_once(&many).await, many);
        let smuggle = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let out = read_at_once(smuggle).await;
        assert!(
            out.windows(5).any(|w| w == b"d\r\n\0\r"),
            "the second head is spoiled: {:?}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn upgrades_http2_and_garbage_are_left_to_hyper() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nframes";
        assert_eq!(through(preface, 4), (preface.to_vec(), State::PassThrough));
        let upgrade =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframes";
        assert_eq!(through(upgrade, 9), (upgrade.to_vec(), State::PassThrough));
        let garbage = b"\x16\x03\x01 not http at all\r\n\r\n";
        assert_eq!(through(garbage, 2), (garbage.to_vec(), State::PassThrough));
    }

    #[test]
    fn a_bad_chunk_stops_the_scan_without_losing_bytes() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nmore";
        assert_eq!(through(input, 6), (input.to_vec(), State::PassThrough));
    }

    #[test]
    fn a_slow_head_reaches_hyper_as_it_arrives() {
        let mut guard = FramingGuard::new(());
        guard.feed(BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r"[..]));
        assert_eq!(&guard.ready[..], b"GET / HTTP/1.1\r\nHost: x\r");
        guard.feed(BytesMut::from(&b"\n\r"[..]));
        assert_eq!(&guard.ready[..], b"GET / HTTP/1.1\r\nHost: x\r\n");
    }
}
