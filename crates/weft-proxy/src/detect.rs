//! Protocol detection for ports whose protocol nobody declared (Istio's "protocol
//! sniffing"): the first bytes a client sends say whether the connection is HTTP (an
//! HTTP/1.x request line or the HTTP/2 connection preface) or anything else — TLS, a
//! database protocol — which then travels as opaque TCP.
//!
//! As in Istio, detection waits for the client to speak: a server-first protocol (MySQL,
//! SMTP) on an undeclared port waits too, which is why such ports should be declared `TCP`.
//! The bytes read to decide are not lost: [`Sniffed`] hands them out again before the rest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a connection turned out to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x or HTTP/2 with prior knowledge.
    Http,
    /// Anything else, proxied as opaque TCP.
    Opaque,
}

/// What connections to a port carry, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// HTTP (a declared HTTP, HTTP2 or GRPC port).
    Http,
    /// Opaque TCP.
    Tcp,
    /// A port of undeclared protocol: whatever each connection's first bytes say.
    Detect,
}

/// The HTTP/2 connection preface, up to the first line break.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Request methods that start an HTTP/1.x request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// How long a client may take to send enough bytes to decide; then its connection is
/// opaque TCP (Istio's `protocolDetectionTimeout`), where the idle timeout still applies.
const DETECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest prefix [`classify`] may need.
const MAX_SNIFF: usize = 16;

/// Decides from a connection's first bytes; `None` while they could still go either way.
pub fn classify(first: &[u8]) -> Option<Detected> {
    let mut undecided = false;
    for token in METHODS.iter().copied().chain([HTTP2_PREFACE]) {
        let n = first.len().min(token.len());
        if first[..n] == token[..n] {
            if n == token.len() {
                return Some(Detected::Http);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(Detected::Opaque)
}

/// A stream whose first bytes were read to detect its protocol, and are read again.
#[derive(Debug)]
pub struct Sniffed<T> {
    prefix: Vec<u8>,
    consumed: usize,
    inner: T,
}

/// Reads from `stream` until its protocol is known. A client that closes before deciding
/// is opaque (its few bytes are passed on as they are).
pub async fn detect<T: AsyncRead + Unpin>(mut stream: T) -> io::Result<(Detected, Sniffed<T>)> {
    let mut prefix = Vec::with_capacity(MAX_SNIFF);
    let deadline = tokio::time::Instant::now() + DETECTION_TIMEOUT;
    let detected = loop {
        if let Some(detected) = classify(&prefix) {
            break detected;
        }
        let mut byte = [0u8; MAX_SNIFF];
        let wanted = MAX_SNIFF - prefix.len();
        // A client that stops mid-way is not waited for forever: what it sent is opaque.
        let Ok(read) = tokio::time::timeout_at(deadline, stream.read(&mut byte[..wanted])).await
        else {
            break Detected::Opaque;
        };
        let n = read?;
        if n == 0 {
            break Detected::Opaque;
        }
        prefix.extend_from_slice(&byte[..n]);
    };
    Ok((
        detected,
        Sniffed {
            prefix,
            consumed: 0,
            inner: stream,
        },
    ))
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix[this.consumed..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
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

    #[test]
    fn request_lines_and_the_http2_preface_are_http() {
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM",
        ] {
            assert_eq!(classify(first), Some(Detected::Http), "{first:?}");
        }
    }

    #[test]
    fn tls_and_binary_protocols_are_opaque() {
        for first in [
            &[0x16, 0x03, 0x01, 0x02][..],
            b"\x00\x00\x00\x0a",
            b"*1\r\n$4\r\nPING\r\n",
            b"GETX",
            b"HELO example\r\n",
        ] {
            assert_eq!(classify(first), Some(Detected::Opaque), "{first:?}");
        }
    }

    #[test]
    fn a_prefix_of_a_method_waits_for_more() {
        for first in [&b""[..], b"G", b"GE", b"GET", b"PR", b"PRI * HTTP/2"] {
            assert_eq!(classify(first), None, "{first:?}");
        }
    }

    #[tokio::test]
    async fn the_sniffed_bytes_are_read_again() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .expect("write");
        let reading = tokio::spawn(detect(server));
        tokio::io::AsyncWriteExt::write_all(&mut client, b"T /a HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        drop(client);
        let (detected, mut stream) = reading.await.expect("join").expect("detect");
        assert_eq!(detected, Detected::Http);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET /a HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_opaque() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PO")
            .await
            .expect("write");
        drop(client);
        let (detected, mut stream) = detect(server).await.expect("detect");
        assert_eq!(detected, Detected::Opaque);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"PO");
    }
}
