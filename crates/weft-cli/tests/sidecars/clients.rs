//! How tests talk to the sidecars and the applications: HTTP/1.1 written by hand on a plain
//! socket, through the client's outbound listener ([`via_proxy`], [`request`]) or as raw
//! bytes anywhere ([`raw`]), and TLS straight to an inbound listener with a client
//! certificate of the test's choosing ([`direct`], [`client_cert`]). Hand-written, so a test
//! controls every byte and sees every byte of the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::mesh::{Mesh, config_dir};

/// Reads an HTTP head byte by byte, so nothing after it is consumed; `None` when the stream
/// ends first.
pub fn read_head(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? != 1 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// Sends one HTTP/1.1 request through an explicit proxy; returns status and body.
pub fn via_proxy(proxy: &str, url: &str) -> (u16, String) {
    request(proxy, url, "")
}

/// Sends one HTTP/1.1 request with extra header lines (each ending in CRLF) through an
/// explicit proxy; returns status and body.
pub fn request(proxy: &str, url: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    write!(
        stream,
        "GET {url} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Writes `bytes` to `addr` and returns what comes back until the proxy closes (or 20 s).
pub fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// A client certificate and key, DER.
pub type ClientCert = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Accepts any server certificate: these tests check what the server accepts.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends a request straight to an inbound listener, in plaintext or over TLS (as a mesh
/// client: offering Istio's ALPN) with `cert`;
/// returns the response, or `None` when the connection was refused or closed.
pub fn direct(inbound: &str, tls: Option<Option<ClientCert>>) -> Option<String> {
    let mut tcp = TcpStream::connect(inbound).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = b"GET /direct HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    match tls {
        None => {
            tcp.write_all(request).ok()?;
            tcp.read_to_end(&mut response).ok()?;
        }
        Some(cert) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
            let mut config = match cert {
                Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
                None => builder.with_no_client_auth(),
            };
            // As a mesh client: Istio's ALPN mark, else a PERMISSIVE port takes this for the
            // application's own TLS.
            config.alpn_protocols = vec![b"istio".to_vec()];
            let connection = rustls::ClientConnection::new(
                Arc::new(config),
                "echo.test.svc.cluster.local".try_into().unwrap(),
            )
            .unwrap();
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            stream.write_all(request).ok()?;
            stream.read_to_end(&mut response).ok()?;
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    response.starts_with("HTTP/1.1").then_some(response)
}

/// Opens mTLS to `addr` with `cert`, sends `bytes` and returns what comes back until the
/// server closes (empty when the connection was refused or closed at once).
pub fn tls_exchange(addr: &str, cert: ClientCert, bytes: &[u8]) -> String {
    tls_request(addr, Some(cert), &[], bytes)
}

/// Opens TLS to `addr`, with a client certificate when given and offering `alpn`, sends
/// `bytes` and returns what comes back until the server closes (empty when the handshake
/// failed or the connection closed at once). The server's certificate is not checked.
pub fn tls_request(addr: &str, cert: Option<ClientCert>, alpn: &[&[u8]], bytes: &[u8]) -> String {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connection = rustls::ClientConnection::new(
        Arc::new(config),
        "echo.test.svc.cluster.local".try_into().unwrap(),
    )
    .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let mut answer = Vec::new();
    if stream.write_all(bytes).is_ok() {
        let _ = stream.read_to_end(&mut answer);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A certificate for `spiffe_id`, signed by the mesh root in the state dir, or by a CA of its
/// own; valid now, or expired.
pub fn client_cert(mesh: &Mesh, spiffe_id: &str, own_ca: bool, expired: bool) -> ClientCert {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let state = config_dir(mesh.dir.path()).join(".weft");
    let (issuer_cert, issuer_key) = if own_ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key)
    } else {
        (
            std::fs::read_to_string(state.join("root-cert.pem")).unwrap(),
            KeyPair::from_pem(&std::fs::read_to_string(state.join("root-key.pem")).unwrap())
                .unwrap(),
        )
    };
    let issuer = Issuer::from_ca_cert_pem(&issuer_cert, issuer_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into().unwrap())];
    let now = time::OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = if expired {
        (now - time::Duration::days(2), now - time::Duration::days(1))
    } else {
        (
            now - time::Duration::minutes(1),
            now + time::Duration::hours(1),
        )
    };
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}
