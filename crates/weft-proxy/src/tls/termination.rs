//! TLS a gateway server terminates (Gateway `tls` `SIMPLE` or `MUTUAL`): the certificate it
//! presents and every check its Gateway asks for — the client's certificate chained to
//! `caCertificates`, not revoked (`caCrl`) and carrying one of `subjectAltNames`; the TLS
//! versions between `minProtocolVersion` and `maxProtocolVersion`; the TLS 1.2 suites of
//! `cipherSuites` (OpenSSL's names, as Envoy takes them; TLS 1.3's are not configurable).
//! A setting rustls cannot honour is an error, which rejects the listener, never a weaker
//! server.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CipherSuite, DistinguishedName, SignatureScheme, SupportedProtocolVersion};

use super::ServerSan;
use super::identity::subject_alt_names;

/// What a gateway server's TLS is made of, PEM where it is bytes.
#[derive(Debug, Default)]
pub struct Termination<'a> {
    /// The server's certificate chain.
    pub chain: &'a [u8],
    /// Its private key.
    pub key: &'a [u8],
    /// With `MUTUAL`: the CAs a client's certificate must chain to.
    pub client_ca: Option<&'a [u8]>,
    /// Revoked client certificates.
    pub crl: Option<&'a [u8]>,
    /// Names one of which a client's certificate must carry; any when empty.
    pub client_names: Vec<ServerSan>,
    /// The lowest and highest TLS versions, as Envoy numbers them (`TLSv1_2` is 3,
    /// `TLSv1_3` 4; 0 lets the proxy choose).
    pub versions: (i32, i32),
    /// TLS 1.2 cipher suites, OpenSSL's names; the defaults when empty.
    pub cipher_suites: Vec<String>,
}

/// The rustls configuration of a gateway server.
pub fn termination_config(settings: &Termination<'_>) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_slice_iter(settings.chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the server certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no server certificate".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(settings.key).map_err(|e| format!("the private key: {e}"))?;
    let mut provider = rustls::crypto::CryptoProvider::clone(&super::provider());
    if !settings.cipher_suites.is_empty() {
        let wanted = settings
            .cipher_suites
            .iter()
            .map(|name| {
                suite(name).ok_or_else(|| format!("cipher suite {name:?} is not supported"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || wanted.contains(&s.suite()));
    }
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(settings.versions)?)
        .map_err(|e| e.to_string())?;
    let builder = match settings.client_ca {
        Some(ca) => {
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(super::pem_roots(ca)?),
                provider,
            );
            if let Some(crl) = settings.crl {
                let crls = CertificateRevocationListDer::pem_slice_iter(crl)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("caCrl: {e}"))?;
                verifier = verifier.with_crls(crls);
            }
            let inner = verifier
                .build()
                .map_err(|e| format!("the CA certificates: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(NamedClientVerifier {
                inner,
                names: settings.client_names.clone(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the server certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS versions between Envoy's minimum and maximum (rustls speaks 1.2 and 1.3; a
/// lower minimum is raised, a maximum below 1.2 cannot be served).
fn versions((min, max): (i32, i32)) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    const TLS12: i32 = 3;
    const TLS13: i32 = 4;
    let max = if max == 0 { TLS13 } else { max };
    if max < TLS12 {
        return Err(format!(
            "a maximum TLS version below 1.2 ({max}) is not supported"
        ));
    }
    let mut versions = Vec::new();
    if min <= TLS12 && max >= TLS12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TLS13 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(format!("no TLS version between {min} and {max}"));
    }
    Ok(versions)
}

/// A TLS 1.2 suite by its OpenSSL name.
fn suite(name: &str) -> Option<CipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => {
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// Checks a client's certificate: its chain (and revocation), then one of the names.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<ServerSan>,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        let carried = subject_alt_names(end_entity);
        if self.names.iter().any(|name| carried.contains(name)) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "the client's certificate carries none of {:?}",
                self.names
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
