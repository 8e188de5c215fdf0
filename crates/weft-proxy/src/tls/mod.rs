//! mTLS between sidecars with rustls: each side presents the workload certificate in force
//! ([`CurrentIdentity`]) and accepts a peer only if its chain leads to the mesh root.
//!
//! * Inbound, the client must present a certificate (mesh mTLS is mutual); its SPIFFE ID is
//!   read after the handshake and must be in the mesh's trust domain.
//! * Outbound, the server's certificate must chain to the root and carry one of the SPIFFE
//!   IDs the endpoint is expected to have (EDS metadata) — there is no DNS name to check.
//!
//! TLS origination to servers outside the mesh (DestinationRule `SIMPLE` and `MUTUAL`) is
//! plain TLS: the server chains to the rule's CA certificates (the system's bundle when it
//! names none) and carries one of its `subjectAltNames` ([`ServerSan`]: a DNS name, or a URI
//! such as a SPIFFE ID), else the SNI name.

pub mod client_hello;
pub mod identity;
pub mod pinned_root;
pub mod termination;

pub use termination::{Termination, termination_config};

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use identity::{CurrentIdentity, peer_spiffe_id};

/// ALPN accepted from peer sidecars, by preference: each offers the protocol its cluster
/// speaks, and Istio's proxies offer their `istio…` values (some only those), which must not
/// fail the handshake.
pub const ALPN: [&[u8]; 7] = [
    b"h2",
    b"http/1.1",
    b"istio-h2",
    b"istio-http/1.1",
    b"istio-http/1.0",
    b"istio-peer-exchange",
    b"istio",
];

/// The ALPN value a sidecar adds to what it offers a peer: how an Istio server's PERMISSIVE
/// port, or a Weft one's, tells mesh mTLS from an application's own TLS.
pub const MESH_ALPN: &[u8] = b"istio";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &CurrentIdentity) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    if let Some(current) = identity.get() {
        roots.add(current.root.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Serves the current certificate to peers, inbound and outbound.
#[derive(Debug)]
struct Presenter(CurrentIdentity);

impl ResolvesServerCert for Presenter {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get()?.certified.clone())
    }
}

impl ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get()?.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The inbound TLS configuration: client certificates required and verified against the
/// mesh root of the identity in force. Built per connection, so a new root takes effect at
/// once.
pub fn server_config(
    identity: &CurrentIdentity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Presenter(identity.clone())));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The outbound TLS configuration for an endpoint expected to be one of `identities` (any
/// mesh identity when empty).
pub fn client_config(
    identity: &CurrentIdentity,
    identities: Vec<String>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = PeerVerifier {
        roots: roots(identity)?,
        algorithms: provider.signature_verification_algorithms,
        identities,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Presenter(identity.clone())));
    config.alpn_protocols = alpn
        .iter()
        .chain([&MESH_ALPN])
        .map(|p| p.to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// Checks a mesh peer's certificate: chain to the mesh root, then SPIFFE ID.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    identities: Vec<String>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let Some(peer) = peer_spiffe_id(end_entity) else {
            return Err(rustls::Error::General(
                "the peer's certificate has no SPIFFE ID".into(),
            ));
        };
        if !self.identities.is_empty() && !self.identities.contains(&peer) {
            return Err(rustls::Error::General(format!(
                "the peer is {peer}, expected one of {:?}",
                self.identities
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Where Linux distributions keep the system's CA bundle.
const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The system's CA bundle (PEM), for origination without `caCertificates`.
pub fn system_ca_bundle() -> Option<Vec<u8>> {
    SYSTEM_CA_BUNDLES
        .iter()
        .find_map(|path| std::fs::read(path).ok())
}

/// A name a server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSan {
    /// A DNS name (`*.example.com` covers one label).
    Dns(String),
    /// A URI, exactly (`spiffe://…`).
    Uri(String),
}

/// The TLS configuration of an origination to a server outside the mesh (DestinationRule
/// `SIMPLE` or `MUTUAL`): the server must chain to a certificate of `ca` (PEM) and carry one
/// of `names` (the SNI name when there are none); `client` is the PEM certificate chain and
/// key presented for `MUTUAL`.
pub fn origination_config(
    ca: &[u8],
    names: &[ServerSan],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let roots = Arc::new(pem_roots(ca)?);
    if roots.is_empty() {
        return Err("no CA certificate to check the server against".into());
    }
    let provider = provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("the CA certificates: {e}"))?;
    let names = names
        .iter()
        .map(|name| match name {
            ServerSan::Dns(dns) => ServerName::try_from(dns.clone())
                .map(Expected::Dns)
                .map_err(|e| format!("subjectAltNames {dns:?}: {e}")),
            ServerSan::Uri(uri) => Ok(Expected::Uri(uri.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedServerVerifier {
            inner,
            roots,
            algorithms,
            names,
        }));
    let config = match client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The certificates of a PEM bundle, as trust anchors.
pub(crate) fn pem_roots(ca: &[u8]) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca) {
        let certificate = certificate.map_err(|e| format!("the CA certificates: {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("a CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// Checks a server outside the mesh: chain to the configured CAs, and one of the configured
/// names (Istio's `subjectAltNames`), or the SNI name when none are configured.
#[derive(Debug)]
struct NamedServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    names: Vec<Expected>,
}

/// A subject alternative name to find in the server's certificate.
#[derive(Debug)]
enum Expected {
    Dns(ServerName<'static>),
    Uri(String),
}

impl ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let mut refused = None;
        for name in &self.names {
            let verified = match name {
                Expected::Dns(name) => self.inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    name,
                    ocsp_response,
                    now,
                ),
                Expected::Uri(uri) => {
                    let parsed = ParsedCertificate::try_from(end_entity)?;
                    verify_server_cert_signed_by_trust_anchor(
                        &parsed,
                        &self.roots,
                        intermediates,
                        now,
                        self.algorithms.all,
                    )
                    .and_then(|()| {
                        let carried = identity::subject_alt_names(end_entity);
                        if carried.contains(&ServerSan::Uri(uri.clone())) {
                            Ok(ServerCertVerified::assertion())
                        } else {
                            Err(rustls::Error::General(format!(
                                "the server's certificate does not carry {uri}"
                            )))
                        }
                    })
                }
            };
            match verified {
                Ok(verified) => return Ok(verified),
                Err(error) => refused = Some(error),
            }
        }
        Err(refused.unwrap_or(rustls::Error::General("no name to check".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
