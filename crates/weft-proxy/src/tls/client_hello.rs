//! What a TLS client offers, read from its ClientHello without taking it from the stream:
//! the ALPN protocols, which tell mesh mTLS (Istio's `istio…` values) from an application's
//! own TLS on a PERMISSIVE port.

use std::time::Duration;

use tokio::net::TcpStream;

/// The largest ClientHello record read (a TLS record's payload is at most 16 KiB).
const MAX_RECORD: usize = 5 + 16 * 1024;

/// The ALPN protocols the ClientHello waiting on `stream` offers (empty when it offers
/// none), or `None` when what waits is not a ClientHello; peeks until the first record is
/// whole or `timeout` passes.
pub async fn offered_alpn(
    stream: &TcpStream,
    timeout: Duration,
) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let mut buffer = vec![0u8; MAX_RECORD];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buffer))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let wanted = record_length(&buffer[..peeked]);
        if peeked == 0 || wanted.is_some_and(|wanted| peeked >= wanted) {
            return Ok(alpn(&buffer[..peeked]));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // The rest of the record is on its way: wait for more bytes than we have.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `protocols` mark mesh mTLS (an Istio proxy's or a Weft sidecar's `istio…`).
pub fn is_mesh(protocols: &[Vec<u8>]) -> bool {
    protocols.iter().any(|p| p.starts_with(b"istio"))
}

/// The whole first record's length, once its header is in.
fn record_length(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..5)?;
    Some(5 + usize::from(u16::from_be_bytes([header[3], header[4]])).min(MAX_RECORD - 5))
}

/// A cursor over big-endian TLS fields; every read fails past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A field with a length prefix of `width` bytes.
    fn vector(&mut self, width: usize) -> Option<Reader<'a>> {
        let length = match width {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => {
                let b = self.take(3)?;
                usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])
            }
        };
        self.take(length).map(Reader)
    }
}

/// The ALPN extension's protocols in a (possibly cut short) ClientHello record.
fn alpn(record: &[u8]) -> Option<Vec<Vec<u8>>> {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: usize = 1;
    const ALPN: usize = 16;
    let mut record = Reader(record);
    if record.take(1)?[0] != HANDSHAKE {
        return None;
    }
    record.take(2)?; // record version
    let mut handshake = record.vector(2)?;
    if handshake.u8()? != CLIENT_HELLO {
        return None;
    }
    let mut hello = handshake.vector(3)?;
    hello.take(2 + 32)?; // version, random
    hello.vector(1)?; // session id
    hello.vector(2)?; // cipher suites
    hello.vector(1)?; // compression methods
    let mut extensions = hello.vector(2)?;
    while let Some(kind) = extensions.u16() {
        let mut data = extensions.vector(2)?;
        if kind == ALPN {
            let mut list = data.vector(2)?;
            let mut protocols = Vec::new();
            while let Some(protocol) = list.vector(1) {
                protocols.push(protocol.0.to_vec());
            }
            return Some(protocols);
        }
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, from rustls, offering `protocols`.
    fn client_hello(protocols: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| unreachable!("the default versions are supported"));
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("echo.test").unwrap_or_else(|_| {
            unreachable!("a valid name");
        });
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name)
            .unwrap_or_else(|_| unreachable!("a client connection"));
        let mut bytes = Vec::new();
        let _ = connection.write_tls(&mut bytes);
        bytes
    }

    #[test]
    fn reads_the_offered_protocols() {
        let hello = client_hello(&[b"h2", b"istio"]);
        assert_eq!(alpn(&hello), Some(vec![b"h2".to_vec(), b"istio".to_vec()]));
        assert!(is_mesh(&alpn(&hello).unwrap_or_default()));
        let plain = client_hello(&[b"http/1.1"]);
        assert!(!is_mesh(&alpn(&plain).unwrap_or_default()));
        assert_eq!(alpn(&client_hello(&[])), Some(Vec::new()));
        assert_eq!(record_length(&hello), Some(hello.len()));
        // Cut short, or not TLS at all: no protocols, no panic.
        assert_eq!(alpn(&hello[..hello.len() / 2]), None);
        assert_eq!(alpn(b"GET / HTTP/1.1\r\n"), None);
    }
}
