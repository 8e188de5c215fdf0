//! Trusting the control plane by a pinned hash of its root (`--control-root-hash`), as
//! kubeadm pins a cluster's CA: `sha256:` and the hex SHA-256 of the root certificate's
//! public key (its DER SubjectPublicKeyInfo), which `weft control` logs at start. The
//! first connection takes the chain the server presents, keeps the certificate whose key
//! has that hash, and verifies the server against it alone (its name included); that
//! certificate is then the root every later connection must chain to. A server whose
//! chain holds no such certificate is refused: a root is never taken from the network on
//! its word.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A parsed pin: the SHA-256 of a certificate's SubjectPublicKeyInfo.
pub type Pin = [u8; 32];

/// Reads `sha256:<64 hex digits>`.
pub fn parse_pin(text: &str) -> Result<Pin, String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{text:?} does not start with sha256:"))?;
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(format!("{text:?}: the hash has 64 hex digits"));
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{text:?} is not hex"))?;
    }
    Ok(pin)
}

/// The pin of a DER certificate; `None` when it does not parse.
pub fn pin_of(der: &[u8]) -> Option<Pin> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        certificate.tbs_certificate.subject_pki.raw,
    );
    digest.as_ref().try_into().ok()
}

/// The pin of the first certificate of `pem`, written `sha256:<hex>`, as `weft control`
/// logs its root's.
pub fn pin_of_pem(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let pin = pin_of(&der)?;
    Some(format!(
        "sha256:{}",
        pin.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Connects to the control plane at `address` (`host:port`) over TLS and returns, as PEM,
/// the certificate of its chain whose key has the hash `pin`, once the server's certificate
/// has been verified against it for `address`'s host.
pub async fn fetch(address: &str, pin: Pin, timeout: Duration) -> Result<Vec<u8>, String> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedVerifier {
        pin,
        provider: provider.clone(),
        anchor: Mutex::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {address}: {e}"))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("TLS with {address} timed out"))??;
    let anchor = verifier
        .anchor
        .lock()
        .map_err(|_| "the verifier failed".to_string())?
        .take()
        .ok_or("no certificate of the chain has the pinned hash")?;
    Ok(pem(&anchor))
}

fn pem(der: &[u8]) -> Vec<u8> {
    let encoded = STANDARD.encode(der);
    let mut text = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");
    text.into_bytes()
}

/// Accepts a server whose chain holds a certificate with the pinned key, verified against
/// that certificate as the only root; keeps it.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<rustls::crypto::CryptoProvider>,
    anchor: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|certificate| pin_of(certificate) == Some(self.pin))
            .ok_or_else(|| {
                rustls::Error::General(
                    "no certificate of the chain has the pinned hash".to_string(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Ok(mut kept) = self.anchor.lock() {
            *kept = Some(anchor.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
